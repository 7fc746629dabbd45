"""``Pipeline.wait`` and ``Pipeline.run_many``: many runs started at once, awaited with few
store reads."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PipelineFactory

import flowstone as fs
from flowstone.engine import StepRunner
from flowstone.runs import POLL_WINDOW, wait_for_runs


class ThreadWorker:
    """A non-blocking executor: steps go on a queue that a worker thread drains, the way
    a broker and a Celery worker would (``run(wait=False)`` returns before anything ran)."""

    name, blocking = "thread-worker", False

    def __init__(self) -> None:
        self.steps: queue.Queue[Any] = queue.Queue()
        self.runner: StepRunner | None = None
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.started = threading.Event()  # released by the test: runs pile up before it

    def dispatch(self, runner: StepRunner, run_id: str, steps: Any) -> None:
        self.runner = runner
        if not self.thread.is_alive():
            self.thread.start()
        for step in steps:
            self.steps.put((run_id, step.asset, step.partition))

    def _work(self) -> None:
        self.started.wait()
        while (item := self.steps.get()) is not None:
            assert self.runner is not None
            ready = self.runner.run_step(*item).steps
            self.dispatch(self.runner, item[0], ready)

    def close(self) -> None:
        if self.thread.is_alive():
            self.started.set()
            self.steps.put(None)
            self.thread.join(10)


class CountingStore:
    """Delegates to a real store, counting run reads (and hiding ``get_runs`` if asked)."""

    def __init__(self, store: Any, *, with_get_runs: bool = True) -> None:
        self._store = store
        self.calls = {"get_run": 0, "get_runs": 0}
        self.rows_read = 0
        if with_get_runs:
            self.get_runs = self._get_runs

    def __getattr__(self, name: str) -> Any:
        if name == "get_runs":
            raise AttributeError(name)
        return getattr(self._store, name)

    def get_run(self, run_id: str) -> Any:
        self.calls["get_run"] += 1
        self.rows_read += 1
        return self._store.get_run(run_id)

    def _get_runs(self, run_ids: Any) -> Any:
        self.calls["get_runs"] += 1
        self.rows_read += len(run_ids)
        return self._store.get_runs(run_ids)


SHOPS = fs.StaticPartitions([str(i) for i in range(200)])


@fs.asset(partitions=SHOPS)
def orders(context: fs.Context) -> int:
    return int(str(context.partition))


@fs.asset(partitions=SHOPS)
def revenue(orders: int) -> int:
    return orders * 10


@pytest.fixture
def worker() -> Iterator[ThreadWorker]:
    w = ThreadWorker()
    yield w
    w.close()


def _pipeline(make_pipeline: PipelineFactory, worker: ThreadWorker) -> fs.Pipeline:
    return make_pipeline([orders, revenue], executor=worker)


def test_wait_returns_every_run_in_the_order_given(
    make_pipeline: PipelineFactory, worker: ThreadWorker
) -> None:
    p = _pipeline(make_pipeline, worker)
    started = [p.run("revenue", str(i), wait=False) for i in range(150)]
    assert {r.status for r in started} == {"running"}  # nothing ran yet
    worker.started.set()
    mixed: list[str | fs.RunResult] = [r if i % 2 else r.run_id for i, r in enumerate(started)]
    done = p.wait(mixed, timeout=30)
    assert [r.run_id for r in done] == [r.run_id for r in started]
    assert [r.status for r in done] == ["succeeded"] * 150
    assert [r.value for r in done[:3]] == [0, 10, 20]
    (one,) = p.wait(started[7])  # one run, not in a list
    assert (one.run_id, one.value) == (started[7].run_id, 70)


def test_wait_reads_many_runs_per_poll(
    make_pipeline: PipelineFactory, worker: ThreadWorker
) -> None:
    p = _pipeline(make_pipeline, worker)
    started = [p.run("revenue", str(i), wait=False).run_id for i in range(2 * POLL_WINDOW + 5)]
    worker.started.set()
    counting = CountingStore(p.store)
    records = wait_for_runs(counting, started, timeout=30)
    assert [r.status for r in records] == ["succeeded"] * len(started)
    # one read per window at the very least, but never one read per run per poll
    assert counting.calls["get_runs"] >= 3
    assert counting.calls["get_run"] == 0
    assert counting.rows_read < 20 * len(started)


def test_a_store_without_get_runs_is_polled_run_by_run(
    make_pipeline: PipelineFactory, worker: ThreadWorker
) -> None:
    p = _pipeline(make_pipeline, worker)
    started = [p.run("revenue", str(i), wait=False).run_id for i in range(10)]
    worker.started.set()
    plain = CountingStore(p.store, with_get_runs=False)
    records = wait_for_runs(plain, started, timeout=30)
    assert [r.status for r in records] == ["succeeded"] * 10
    assert plain.calls["get_runs"] == 0 and plain.calls["get_run"] >= 10


def test_timeout_returns_what_is_still_running(
    make_pipeline: PipelineFactory, worker: ThreadWorker
) -> None:
    p = _pipeline(make_pipeline, worker)  # the worker is never released
    started = [p.run("revenue", str(i), wait=False) for i in range(POLL_WINDOW + 6)]
    late = p.wait(started, timeout=0.05)
    assert [r.run_id for r in late] == [r.run_id for r in started]  # beyond the window too
    assert {r.status for r in late} == {"running"}


def test_bad_input_is_named(make_pipeline: PipelineFactory, worker: ThreadWorker) -> None:
    p = _pipeline(make_pipeline, worker)
    run = p.run("revenue", "1", wait=False)
    with pytest.raises(fs.RunNotFoundError, match="no run 'nope'"):
        p.wait([run, "nope"], timeout=1)
    with pytest.raises(fs.UsageError, match=r"run ids or RunResults.*got 42 \(int\)"):
        p.wait([run, 42], timeout=1)  # type: ignore[list-item]
    with pytest.raises(fs.UsageError, match="got ''"):
        p.wait([""])
    with pytest.raises(fs.UsageError, match="timeout"):
        p.wait([run], timeout=-1)
    assert p.wait([]) == []


def test_in_process_runs_are_settled_at_once(make_pipeline: PipelineFactory) -> None:
    p = make_pipeline([orders, revenue])
    runs = [p.run("revenue", k) for k in ("1", "2")]
    assert [r.value for r in p.wait(runs)] == [10, 20]


def test_run_many_in_process_runs_each_partition(make_pipeline: PipelineFactory) -> None:
    p = make_pipeline([orders, revenue])
    results = p.run_many("revenue", ["3", "1", "2"])
    assert [(r.partition, r.status, r.value) for r in results] == [
        ("3", "succeeded", 30), ("1", "succeeded", 10), ("2", "succeeded", 20)]


def test_run_many_on_a_queue_waits_for_all_of_them(
    make_pipeline: PipelineFactory, worker: ThreadWorker
) -> None:
    p = _pipeline(make_pipeline, worker)  # no dispatch_many: one dispatch per run
    started = p.run_many("revenue", [str(i) for i in range(30)], wait=False)
    assert {r.status for r in started} == {"running"}
    worker.started.set()
    done = p.wait(started, timeout=30)
    assert [r.value for r in done] == [10 * i for i in range(30)]


def test_run_many_hands_all_runs_to_dispatch_many(make_pipeline: PipelineFactory) -> None:
    class Bulk:
        name, blocking = "bulk", False

        def __init__(self) -> None:
            self.calls: list[list[tuple[str, list[str]]]] = []

        def dispatch(self, runner: Any, run_id: str, steps: Any) -> None:
            raise AssertionError("run_many must use dispatch_many")

        def dispatch_many(self, runner: Any, runs: Any) -> None:
            self.calls.append([(rid, [s.asset for s in steps]) for rid, steps in runs])

        def close(self) -> None:
            return None

    bulk = Bulk()
    p = make_pipeline([orders, revenue], executor=bulk)
    started = p.run_many("revenue", ["1", "2", "3"], wait=False)
    (call,) = bulk.calls
    assert call == [(r.run_id, ["orders"]) for r in started]


def test_run_many_creates_and_hands_over_runs_in_chunks(make_pipeline: PipelineFactory) -> None:
    """200 runs: created 128 at a time, in one ``create_runs`` call per chunk where the
    store offers it, and each chunk handed over before the next is created."""
    from flowstone.defaults.memory_store import MemoryRunStore

    log: list[str] = []

    class BulkStore(MemoryRunStore):
        def create_runs(self, runs: Any) -> list[Any]:
            log.append(f"create {len(runs)}")
            return [self.create_run(run, steps) for run, steps in runs]

    class Bulk:
        name, blocking = "bulk", False

        def dispatch(self, runner: Any, run_id: str, steps: Any) -> None:
            raise AssertionError("run_many must use dispatch_many")

        def dispatch_many(self, runner: Any, runs: Any) -> None:
            log.append(f"dispatch {len(runs)}")

        def close(self) -> None:
            return None

    p = make_pipeline([orders, revenue], executor=Bulk(), store=BulkStore())
    started = p.run_many("revenue", [str(i) for i in range(200)], wait=False)
    assert log == ["create 128", "dispatch 128", "create 72", "dispatch 72"]
    assert [r.partition for r in started] == [str(i) for i in range(200)]
    assert len({r.run_id for r in started}) == 200
    assert {s.asset for r in started for s in p.store.list_steps(r.run_id)} == {
        "orders", "revenue"
    }


def test_run_many_refuses_what_is_not_a_list_of_partitions(
    make_pipeline: PipelineFactory,
) -> None:
    p = make_pipeline([orders, revenue])
    with pytest.raises(fs.UsageError, match="list of partition keys"):
        p.run_many("revenue", "2024-01-01")
    with pytest.raises(fs.UsageError, match="list of partition keys"):
        p.run_many("revenue", 7)  # type: ignore[arg-type]
    with pytest.raises(fs.PartitionError, match="'not-a-shop' is not a partition"):
        p.run_many("revenue", ["1", "not-a-shop"])
    assert p.runs() == []  # nothing was started by the refused calls
    assert p.run_many("revenue", []) == []


def test_run_timeout_cancels_on_a_queue_executor(
    make_pipeline: PipelineFactory, worker: ThreadWorker
) -> None:
    """``run(timeout=)`` cancels a run nobody picked up, as it does in-process (issue: the
    Celery run returned ``running`` and later succeeded)."""
    p = _pipeline(make_pipeline, worker)  # the worker is never released: no one runs it
    result = p.run("revenue", "1", timeout=0.2)
    assert result.status == "cancelled"
    assert "timed out after 0.2s" in (result.error or "")
    worker.started.set()  # a worker that shows up late runs nothing of it
    assert p.wait(result, timeout=5)[0].status == "cancelled"


class _Clock:
    """A fake ``time`` for ``flowstone.runs``: sleeping moves it forward."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class _SettlesAt:
    """A store whose one run settles when the fake clock reaches ``at``."""

    name = "settles-at"

    def __init__(self, clock: _Clock, at: float) -> None:
        from datetime import UTC, datetime

        from flowstone.records import RunRecord

        self.clock, self.at, self.reads = clock, at, 0
        now = datetime.now(UTC)
        self.record = RunRecord("r1", "p", ("a",), "", "running", now, now)

    def get_run(self, run_id: str) -> Any:
        import dataclasses

        self.reads += 1
        status = "succeeded" if self.clock.now >= self.at else "running"
        return dataclasses.replace(self.record, status=status)


@pytest.mark.parametrize("settles_at", [0.05, 0.3, 1.3, 4.0, 30.0])
def test_a_settled_run_is_seen_at_most_five_percent_late(
    settles_at: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flowstone.runs as runs

    clock = _Clock()
    monkeypatch.setattr(runs, "time", clock)
    store = _SettlesAt(clock, settles_at)
    (record,) = wait_for_runs(store, ["r1"], timeout=None)  # type: ignore[arg-type]
    assert record.status == "succeeded"
    # seen within 5% of the time waited (10 ms at first, 250 ms at most)
    assert clock.now <= settles_at + max(0.01, min(0.25, 0.05 * clock.now)) + 1e-9
    assert max(clock.sleeps) <= 0.25
    # and not by reading in a tight loop: about 90 reads in the first five seconds
    assert store.reads <= 20 + 70 * (settles_at > 0.2) + 4 * max(0.0, settles_at - 5) + 2
