"""The in-process executor: few threads for quick steps, more while steps block.

Overlap is asserted from the start and end times the assets record themselves (never
from how long a run took): assets that overlap in time ran on different threads.
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any

import pytest
from conftest import Counter, PipelineFactory

import flowstone as fs
from flowstone.defaults.sqlite_store import SQLiteRunStore

_GENEROUS = 60.0  # a blocked_after no quick step reaches: they all count as running afresh


class Clock:
    """Where and when each asset ran (thread, start, end), thread-safe."""

    def __init__(self) -> None:
        self.spans: dict[str, tuple[int, float, float]] = {}
        self._lock = threading.Lock()

    def asset(self, name: str, deps: tuple[str, ...] = (), *, sleep: float = 0.0) -> fs.AssetDef:
        def fn(**inputs: int) -> int:
            started = time.perf_counter()
            if sleep:
                time.sleep(sleep)  # waits like I/O: releases the GIL
            with self._lock:
                self.spans[name] = (threading.get_ident(), started, time.perf_counter())
            return 1 + sum(inputs.values())

        fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(d, inspect.Parameter.KEYWORD_ONLY) for d in deps]
        )
        return fs.asset(name=name)(fn)

    def threads(self, names: list[str] | None = None) -> set[int]:
        return {t for n, (t, _, _) in self.spans.items() if names is None or n in names}

    def all_overlap(self, names: list[str]) -> bool:
        """Every one of ``names`` started before any of them ended."""
        spans = [self.spans[n] for n in names]
        return max(s for _, s, _ in spans) < min(e for _, _, e in spans)


def test_quick_steps_run_one_after_another_on_one_worker_thread(
    make_pipeline: PipelineFactory,
) -> None:
    """Quick steps never look blocked, so no second thread is started for them: a fan-out
    of 20 independent assets and a chain after them all run on one thread (not the
    caller's)."""
    clock = Clock()
    roots = [clock.asset(f"r{i}") for i in range(20)]
    chain = [clock.asset("c0", ("r0", "r1")), clock.asset("c1", ("c0",)),
             clock.asset("c2", ("c1", "r19"))]  # fmt: skip
    p = make_pipeline(
        [*roots, *chain], executor=fs.InProcessExecutor(max_workers=4, blocked_after=_GENEROUS)
    )
    result = p.run(["c2", *(a.name for a in roots)])
    assert result.status == "succeeded" and p.get("c2") == 6  # c0 = 3, c1 = 4, c2 = 4 + 1 + 1
    assert len(clock.spans) == 23
    assert len(clock.threads()) == 1
    assert threading.get_ident() not in clock.threads()


def test_independent_slow_assets_still_run_side_by_side(make_pipeline: PipelineFactory) -> None:
    """Assets that wait (here: sleep, as on I/O) each get a thread of their own."""
    clock = Clock()
    slow = [f"fetch_{i}" for i in range(4)]
    assets = [clock.asset(n, sleep=0.3) for n in slow]
    p = make_pipeline([*assets, clock.asset("report", tuple(slow))])
    result = p.run("report")
    assert result.status == "succeeded" and result.value == 5
    assert clock.all_overlap(slow)
    assert len(clock.threads(slow)) == 4


def test_slow_siblings_of_a_fan_out_overlap_too(make_pipeline: PipelineFactory) -> None:
    """The steps one finish makes ready go to the queue; while the worker that made them
    ready is blocked in one, the others are taken by threads started for them."""
    clock = Clock()
    slow = [f"shard_{i}" for i in range(3)]
    assets = [clock.asset("plan"), *(clock.asset(n, ("plan",), sleep=0.3) for n in slow)]
    p = make_pipeline(assets)
    assert p.run(slow).status == "succeeded"
    assert clock.all_overlap(slow)


def test_a_blocked_step_does_not_hold_up_quick_ones(make_pipeline: PipelineFactory) -> None:
    """While one asset waits, a chain of quick independent assets runs to its end."""
    clock = Clock()
    quick = [clock.asset("q0"), *(clock.asset(f"q{i}", (f"q{i - 1}",)) for i in range(1, 15))]
    p = make_pipeline([clock.asset("crawl", sleep=0.5), *quick])
    assert p.run(["crawl", "q14"]).status == "succeeded"
    crawl_end = clock.spans["crawl"][2]
    assert all(clock.spans[f"q{i}"][2] < crawl_end for i in range(15))


def test_a_retry_waits_out_its_backoff_without_holding_the_worker(
    make_pipeline: PipelineFactory,
) -> None:
    """On one worker thread: ``flaky`` (claimed first by its upstream's finish: the first
    ready dependent by name) fails, and ``other`` runs while ``flaky`` waits to retry."""
    clock = Clock()
    tries: list[float] = []

    @fs.asset(retry=fs.RetryPolicy(max_attempts=2, backoff="fixed", base_delay=0.3, jitter=0))
    def flaky(root: int) -> int:
        tries.append(time.perf_counter())
        if len(tries) == 1:
            raise ConnectionError("try again")
        return root + 1

    p = make_pipeline(
        [clock.asset("root"), flaky, clock.asset("other", ("root",))],
        executor=fs.InProcessExecutor(max_workers=1),
    )
    assert p.run(["flaky", "other"]).status == "succeeded"
    assert len(tries) == 2 and p.get("flaky") == 2
    assert tries[0] < clock.spans["other"][2] < tries[1]
    assert len(clock.threads()) == 1


def test_max_workers_bounds_the_threads_that_run_steps(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    names = [f"call_{i}" for i in range(6)]
    threads: set[int] = set()
    lock = threading.Lock()

    def slow(name: str) -> fs.AssetDef:
        def fn() -> str:
            counter.enter()
            try:
                with lock:
                    threads.add(threading.get_ident())
                time.sleep(0.1)
                return name
            finally:
                counter.leave()

        return fs.asset(name=name)(fn)

    p = make_pipeline([slow(n) for n in names], executor=fs.InProcessExecutor(max_workers=2))
    assert p.run(names).status == "succeeded"
    assert counter.peak == 2  # side by side, but never more than two
    assert len(threads) == 2


def test_every_worker_thread_is_gone_when_run_returns(make_pipeline: PipelineFactory) -> None:
    clock = Clock()
    slow = [f"load_{i}" for i in range(3)]
    p = make_pipeline([clock.asset(n, sleep=0.05) for n in slow])
    p.run(slow[0])  # first use starts process-wide helpers (the lease keeper)
    before = threading.active_count()
    assert p.run(slow, force=True).status == "succeeded"
    assert len(clock.threads(slow)) > 1
    assert threading.active_count() == before, threading.enumerate()


def test_a_store_error_in_a_worker_is_raised_from_run(
    make_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error the engine cannot record (the store fails) ends the dispatch and reaches
    the caller; the worker threads are gone."""
    clock = Clock()
    p = make_pipeline([clock.asset("a"), clock.asset("b", ("a",))])
    p.run("a")  # the lease keeper's thread exists from here on
    before = threading.active_count()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(p.store, "claim_step", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        p.run("b", force=True)
    assert threading.active_count() == before, threading.enumerate()


def test_cancelling_returns_while_blocked_workers_still_wait(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    """Two assets block on different threads; the run is cancelled: run() returns at once
    (they finish in the background, unrecorded) and nothing after them starts."""
    release = threading.Event()
    both = threading.Barrier(3, timeout=10)

    def blocked(name: str) -> fs.AssetDef:
        def fn() -> int:
            counter.enter()
            try:
                both.wait()
                release.wait(10)
                return 1
            finally:
                counter.leave()

        return fs.asset(name=name)(fn)

    @fs.asset
    def report(left: int, right: int) -> int:
        counter.hit("report")
        return left + right

    p = make_pipeline([blocked("left"), blocked("right"), report])

    def operator() -> None:
        both.wait()  # both assets are running, each on its own thread
        p.cancel("night-1")

    t = threading.Thread(target=operator)
    t.start()
    try:
        result = p.run("report", run_id="night-1")
        still_blocked = counter.active
    finally:
        release.set()
        t.join()
    assert result.status == "cancelled" and still_blocked == 2
    for _ in range(500):  # let the abandoned assets end before the store closes
        if counter.active == 0:
            break
        threading.Event().wait(0.01)
    assert "report" not in counter.calls and not p.exists("left")


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "2ms"])
def test_blocked_after_must_be_a_positive_number_of_seconds(bad: Any) -> None:
    with pytest.raises(fs.UsageError, match="blocked_after"):
        fs.InProcessExecutor(blocked_after=bad)


def test_the_settings_are_kept() -> None:
    executor = fs.InProcessExecutor(3, blocked_after=0.01, finish_batch=8)
    assert (executor.max_workers, executor.blocked_after, executor.finish_batch) == (3, 0.01, 8)
    assert fs.InProcessExecutor().finish_batch == 32
    assert fs.InProcessExecutor().max_workers >= 5  # min(32, CPUs + 4)


# --- finishes recorded together (a store with finish_steps: SQLite) ------------------------
class CountingStore(SQLiteRunStore):
    """The SQLite store, counting its write transactions of finishes and claims."""

    def __init__(self, path: Any) -> None:
        super().__init__(path)
        self.batches: list[int] = []  # finishes per finish_steps call
        self.single = 0  # finish_step calls
        self.claims: list[int] = []  # steps per claim_steps call

    def finish_steps(self, finishes: Any, *, sources: Any) -> Any:
        self.batches.append(len(finishes))
        return super().finish_steps(finishes, sources=sources)

    def finish_step(self, *args: Any, **kwargs: Any) -> Any:
        self.single += 1
        return super().finish_step(*args, **kwargs)

    def claim_steps(self, keys: Any, **kwargs: Any) -> Any:
        self.claims.append(len(keys))
        return super().claim_steps(keys, **kwargs)


def _layers(clock: Clock, layers: int, width: int) -> list[fs.AssetDef]:
    """``layers`` x ``width`` quick assets, each reading every asset of the layer before."""
    assets: list[fs.AssetDef] = []
    previous: tuple[str, ...] = ()
    for layer in range(layers):
        names = tuple(f"l{layer}_{i}" for i in range(width))
        assets += [clock.asset(n, previous) for n in names]
        previous = names
    return assets


def test_a_layer_of_quick_steps_is_claimed_and_recorded_in_one_transaction_each(
    tmp_path: Any, registry: Any
) -> None:
    """Four layers of eight: each layer is claimed together (less the step its last
    finish claimed for the worker), its finishes are recorded together, every value is
    right and each step was recorded once."""
    clock = Clock()
    store = CountingStore(tmp_path / "fs.db")
    p = fs.Pipeline("layers", _layers(clock, 4, 8), store=store, registry=registry,
                    executor=fs.InProcessExecutor(blocked_after=_GENEROUS))  # fmt: skip
    try:
        result = p.run()
        assert result.status == "succeeded"
        assert [p.get(f"l3_{i}") for i in range(8)] == [1 + 8 * (1 + 8 * (1 + 8 * 1))] * 8
        assert store.claims == [8, 7, 7, 7]
        assert store.single == 0 and sum(store.batches) == 32
        assert len(store.batches) <= 5, store.batches  # one per layer (+ a tail at most)
        audit = [e for e in store.list_audit(result.run_id) if e.kind == "step_succeeded"]
        assert sorted(e.asset for e in audit) == sorted(f"l{i}_{j}" for i in range(4)
                                                        for j in range(8))  # fmt: skip
    finally:
        p.close()


def test_finish_batch_1_records_each_finish_on_its_own(tmp_path: Any, registry: Any) -> None:
    clock = Clock()
    store = CountingStore(tmp_path / "fs.db")
    p = fs.Pipeline("layers", _layers(clock, 3, 4), store=store, registry=registry,
                    executor=fs.InProcessExecutor(finish_batch=1))  # fmt: skip
    try:
        assert p.run().status == "succeeded"
        assert (store.batches, store.claims, store.single) == ([], [], 12)
    finally:
        p.close()


def test_a_long_step_does_not_hold_back_the_finishes_recorded_before_it(
    make_pipeline: PipelineFactory,
) -> None:
    """``quick`` and ``slow`` start together on one worker; while ``slow`` blocks, the
    finish of ``quick`` waiting in the worker's batch is recorded (after the batch's
    ``batch_seconds``) and ``after_quick`` runs on another thread, long before ``slow``
    ends."""
    clock = Clock()
    p = make_pipeline([clock.asset("quick"), clock.asset("slow", sleep=1.5),
                       clock.asset("after_quick", ("quick",))])  # fmt: skip
    assert p.run().status == "succeeded"
    after_ended, slow_ended = clock.spans["after_quick"][2], clock.spans["slow"][2]
    assert after_ended < slow_ended - 0.5, clock.spans


def test_claimed_steps_no_worker_started_are_given_back_when_the_run_is_cancelled(
    tmp_path: Any, registry: Any
) -> None:
    """A blocked step's run is cancelled while the steps claimed with it wait: run()
    returns, and none of them is left ``running`` under a lease (each is ``ready`` again,
    for a resume to take at once)."""
    release, started = threading.Event(), threading.Event()

    @fs.asset
    def gate() -> int:
        started.set()
        release.wait(10)
        return 1

    siblings = [fs.asset(name=f"s{i}")(lambda: 1) for i in range(6)]
    store = SQLiteRunStore(tmp_path / "fs.db")
    # max_workers=1: nobody takes the siblings while gate blocks
    p = fs.Pipeline("cancel", [gate, *siblings], store=store, registry=registry,
                    executor=fs.InProcessExecutor(max_workers=1))  # fmt: skip

    def operator() -> None:
        started.wait(10)
        p.cancel("night-2")

    t = threading.Thread(target=operator)
    t.start()
    try:
        result = p.run(run_id="night-2")
    finally:
        release.set()
        t.join()
    try:
        assert result.status == "cancelled"
        steps = {s.asset: s for s in store.list_steps("night-2")}
        waiting = [s for s in steps.values() if s.asset != "gate"]
        assert waiting and all(s.state != "running" and s.owner is None for s in waiting), steps
    finally:
        for _ in range(500):  # the abandoned gate ends before the store closes
            if not any(t.name.startswith("flowstone-0") for t in threading.enumerate()):
                break
            threading.Event().wait(0.01)
        p.close()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "32"])
def test_finish_batch_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(fs.UsageError, match="finish_batch"):
        fs.InProcessExecutor(finish_batch=bad)


def test_a_claimed_step_taken_over_while_it_waited_is_not_run_here(
    tmp_path: Any, registry: Any
) -> None:
    """``gate`` blocks the only worker longer than the lease of ``sibling``, claimed with
    it; another runner takes ``sibling`` over meanwhile. When the worker gets to it, its
    lease cannot be renewed: it is not run here (it would run twice), and the run waits
    for the runner that holds it."""
    ran: list[str] = []
    started, taken = threading.Event(), threading.Event()

    @fs.asset
    def gate() -> int:
        started.set()  # (sibling was claimed with gate, before gate started)
        taken.wait(10)
        ran.append("gate")
        return 1

    @fs.asset
    def sibling() -> int:
        ran.append("sibling")
        return 2

    store = SQLiteRunStore(tmp_path / "fs.db")
    p = fs.Pipeline("takeover", [gate, sibling], store=store, registry=registry,
                    executor=fs.InProcessExecutor(max_workers=1), lease_seconds=0.5)  # fmt: skip

    seen: list[str] = []  # the sibling's state when gate started, who took it over

    def thief() -> None:
        started.wait(10)
        before = store.get_step("night-3", "sibling", "")
        seen.append(before.state if before else "missing")  # claimed with gate
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # once the sibling's lease has run out
            got = store.claim_step("night-3", "sibling", "", owner="thief", lease_seconds=60)
            if got is not None:
                seen.append("thief")
                taken.set()
                return
            time.sleep(0.05)

    t = threading.Thread(target=thief)
    t.start()
    try:
        result = p.run(run_id="night-3")
    finally:
        taken.set()
        t.join()
    try:
        assert seen == ["running", "thief"]
        assert ran == ["gate"] and result.status == "running"
        step = store.get_step("night-3", "sibling", "")
        assert step is not None and (step.state, step.owner) == ("running", "thief")
    finally:
        p.close()


def test_a_batch_that_cannot_be_recorded_is_raised_and_its_steps_are_given_back(
    tmp_path: Any, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails every batch of finishes: run() raises the error, no worker thread
    is left, and the steps that ran are ``ready`` again (not held until their leases run
    out), so the run resumes at once when the store works again."""
    clock = Clock()
    store = SQLiteRunStore(tmp_path / "fs.db")
    p = fs.Pipeline("broken", _layers(clock, 2, 3), store=store, registry=registry,
                    executor=fs.InProcessExecutor(blocked_after=_GENEROUS))  # fmt: skip
    try:
        p.run()  # the process's lease keeper and batch watcher threads exist from here on
        before = threading.active_count()

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise fs.StorageError("disk I/O error")

        monkeypatch.setattr(store, "finish_steps", broken)
        with pytest.raises(fs.StorageError, match="disk I/O error"):
            p.run(run_id="broken-1", force=True)
        assert threading.active_count() == before, threading.enumerate()
        states = {s.asset: (s.state, s.owner) for s in store.list_steps("broken-1")}
        assert {a: s for a, s in states.items() if a.startswith("l0")} == dict.fromkeys(
            ["l0_0", "l0_1", "l0_2"], ("ready", None)), states
        monkeypatch.undo()
        p.dispatch("broken-1", [s for s in store.list_steps("broken-1") if s.state == "ready"])
        assert p.result("broken-1").status == "succeeded"
        assert p.get("l1_0") == 4
    finally:
        p.close()
