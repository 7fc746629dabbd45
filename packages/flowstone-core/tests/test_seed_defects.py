"""Each defect the reviews of the Elixir implementation found, proven absent here.

See /work/shared/seeds/ and DESIGN.md section 8. Each test would fail if the defect came back.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import re
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Counter, PipelineFactory

import flowstone as fs
import flowstone.errors as errors_module
from flowstone.registry import PluginRegistry

# --- errors are real exceptions -----------------------------------------------------------


def _docstring_tree() -> dict[str, str]:
    """``{class: parent}`` as drawn in flowstone.errors' docstring."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors_module.__doc__ or "").splitlines():
        m = re.match(r"^(\s*)(?:[│ ]*[├└]── )?([A-Z][A-Za-z]+Error)\b", line)
        if not m:
            continue
        depth = line.index(m.group(2))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[m.group(2)] = stack[-1][1]
        stack.append((depth, m.group(2)))
    return parents


def test_seed_errors_are_real_exceptions() -> None:
    names = errors_module.__all__
    assert len(names) >= 20
    for name in names:
        cls = getattr(errors_module, name)
        assert issubclass(cls, fs.FlowStoneError) and issubclass(cls, Exception), name
        assert getattr(fs, name) is cls  # exported at the top level too
        args: tuple[Any, ...] = (["a", "b", "a"],) if cls is fs.CycleError else ("boom",)
        with pytest.raises(fs.FlowStoneError):
            raise cls(*args)
        try:
            raise cls(*args)
        except Exception as caught:  # an ordinary except clause catches it
            assert isinstance(caught, cls)
    tree = _docstring_tree()
    assert set(tree) | {"FlowStoneError"} == set(names)
    for child, parent in tree.items():
        cls = getattr(errors_module, child)
        flowstone_bases = [b for b in cls.__bases__ if issubclass(b, fs.FlowStoneError)]
        assert [b.__name__ for b in flowstone_bases] == [parent], child


# --- cycles name their path ---------------------------------------------------------------


def test_seed_cycle_error_names_the_path() -> None:
    @fs.asset
    def raw(cleaned: Any) -> Any:
        return cleaned

    @fs.asset
    def cleaned(enriched: Any) -> Any:
        return enriched

    @fs.asset
    def enriched(raw: Any) -> Any:
        return raw

    @fs.asset
    def unrelated() -> int:
        return 1

    with pytest.raises(fs.CycleError) as err:
        fs.Pipeline("loop", [unrelated, raw, cleaned, enriched], store="memory://")
    path = err.value.path
    assert len(path) == 4 and path[0] == path[-1]
    assert set(path) == {"raw", "cleaned", "enriched"}
    deps = {"raw": "cleaned", "cleaned": "enriched", "enriched": "raw"}
    # each step follows one dependency edge in a consistent direction
    forward = all(deps[a] == b for a, b in itertools.pairwise(path))
    backward = all(deps[b] == a for a, b in itertools.pairwise(path))
    assert forward or backward
    assert " -> ".join(path) in str(err.value)
    assert isinstance(err.value, fs.DefinitionError)


# --- route decision retention -------------------------------------------------------------


def test_seed_route_decisions_are_pruned(make_pipeline: PipelineFactory) -> None:
    @fs.router(branches=["express", "standard"])
    def shipping() -> str:
        return "express"

    @fs.asset(routed_from="shipping")
    def express() -> str:
        return "fast"

    @fs.asset(routed_from="shipping")
    def standard() -> str:
        return "slow"

    p = make_pipeline([shipping, express, standard], route_retention=timedelta(days=7))
    old = p.run(["express", "standard"])
    assert p.store.get_route_decision(old.run_id, "shipping", "") == "express"
    assert p.prune(datetime.now(UTC) + timedelta(days=6)) == 0
    assert p.prune(datetime.now(UTC) + timedelta(days=8)) == 1
    assert p.store.get_route_decision(old.run_id, "shipping", "") is None
    assert p.prune(datetime.now(UTC) + timedelta(days=8)) == 0


# --- scatter keys are bounded -------------------------------------------------------------


def test_seed_scatter_key_size_limit(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def documents() -> list[dict[str, Any]]:
        return [{"id": 1, "body": "x" * 5000}, {"id": 2, "body": "short"}]

    @fs.asset(scatter=fs.Scatter(items=lambda documents: documents))
    def words(context: fs.Context, documents: Any) -> int:
        return len(context.scatter_item["body"])

    @fs.asset(scatter=fs.Scatter(items=lambda documents: documents, key=lambda d: str(d["id"])))
    def words_by_id(context: fs.Context, documents: Any) -> int:
        return len(context.scatter_item["body"])

    p = make_pipeline([documents, words, words_by_id])
    failed = p.run("words")
    assert failed.status == "failed"
    error = failed.error or ""
    assert "asset 'words'" in error and "limit is 1024" in error and "Scatter(key=" in error
    assert p.run("words_by_id").value == [5000, 5]


# --- signal gate tokens -------------------------------------------------------------------


def test_seed_gate_tokens_are_unguessable_and_namespaced(make_pipeline: PipelineFactory) -> None:
    tokens: dict[str, str] = {}
    lock = threading.Lock()
    both_started = threading.Barrier(2, timeout=5)

    @fs.asset(on_signal=lambda context, payload: payload)
    def transcode(context: fs.Context) -> fs.SignalGate:
        gate = context.signal_gate(timeout=timedelta(minutes=5))
        with lock:
            tokens[str(context.partition)] = gate.token
        both_started.wait()  # the two runs are in flight at the same time
        return gate

    p = make_pipeline([transcode])
    other = make_pipeline([transcode], name="other_pipeline")
    results: dict[str, fs.RunResult] = {}

    def start(video: str) -> None:
        results[video] = p.run("transcode", video)

    threads = [threading.Thread(target=start, args=(v,)) for v in ("video-1", "video-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status for r in results.values()} == {"waiting"}
    t1, t2 = tokens["video-1"], tokens["video-2"]
    assert t1 != t2
    for tok in (t1, t2):
        assert tok.startswith("fsg_")
        assert len(tok) - len("fsg_") >= 22 and re.fullmatch(r"fsg_[A-Za-z0-9_\-]+", tok)
        # only a hash is stored: the store never holds the secret itself
        gate = p.store.get_gate(hashlib.sha256(tok.encode()).hexdigest())
        assert gate is not None and tok not in repr(gate)
    # namespaced: bound to its pipeline, run, asset and partition
    with pytest.raises(fs.SignalError):
        other.signal(t1, "done")
    assert p.signal(t2, "v2.mp4").run_id == results["video-2"].run_id
    assert p.get("transcode", "video-2") == "v2.mp4" and not p.exists("transcode", "video-1")
    with pytest.raises(fs.SignalError):
        p.signal(t2, "again")
    # the comparison is constant time (code review: hmac.compare_digest on the digests)
    from flowstone.engine import resume

    assert "hmac.compare_digest" in inspect.getsource(resume.signal)


# --- per-asset retry policy ---------------------------------------------------------------


def test_seed_per_asset_retry_policy(make_pipeline: PipelineFactory, counter: Counter) -> None:
    @fs.asset(retry=fs.RetryPolicy(max_attempts=4, base_delay=0, jitter=0))
    def flaky_api(context: fs.Context) -> str:
        if counter.hit("flaky_api") < 4:
            raise ConnectionError("503")
        return f"ok after {context.attempt}"

    @fs.asset(retry=fs.RetryPolicy(max_attempts=2, base_delay=0, jitter=0))
    def strict_api() -> str:
        counter.hit("strict_api")
        raise ConnectionError("503")

    @fs.asset
    def no_retry() -> str:
        counter.hit("no_retry")
        raise ConnectionError("503")

    p = make_pipeline([flaky_api, strict_api, no_retry])
    assert p.run("flaky_api").value == "ok after 4"
    assert p.run("strict_api").status == "failed"
    assert p.run("no_retry").status == "failed"
    assert counter.calls == {"flaky_api": 4, "strict_api": 2, "no_retry": 1}


# --- value / metadata consistency ---------------------------------------------------------


class _RecordingIO:
    """Wraps an IO manager, remembering every location it wrote; may fail stores."""

    name = "recording"

    def __init__(self, inner: Any, *, fail: bool = False) -> None:
        self.inner, self.fail, self.stored = inner, fail, []  # type: list[str]

    def store(self, key: Any, value: object) -> str:
        if self.fail:
            raise fs.StorageError("disk full")
        location = self.inner.store(key, value)
        self.stored.append(location)
        return str(location)

    def load(self, location: str) -> object:
        return self.inner.load(location)

    def exists(self, location: str) -> bool:
        return bool(self.inner.exists(location))

    def delete(self, location: str) -> None:
        self.inner.delete(location)


class _FinishFailsOnce:
    """A run store whose first ``finish_step`` dies (the process crashed mid-commit)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.failed = False

    def finish_step(self, *args: Any, **kwargs: Any) -> Any:
        self._crash_once()
        return self._inner.finish_step(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name == "finish_step_reading":  # the same transaction, through the capability
            def reading(*args: Any, **kwargs: Any) -> Any:
                self._crash_once()
                return found(*args, **kwargs)

            return reading
        return found

    def _crash_once(self) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("database connection lost")


def _store(url: str) -> Any:
    if url.startswith("memory"):
        return fs.MemoryRunStore()
    return fs.SQLiteRunStore(url.removeprefix("sqlite:///"))


def test_seed_value_and_metadata_consistent(store_url: str) -> None:
    @fs.asset
    def invoice() -> dict[str, int]:
        return {"total": 120}

    io = _RecordingIO(fs.MemoryIOManager())
    store = _FinishFailsOnce(_store(store_url))
    p = fs.Pipeline("billing", [invoice], store=store, io_managers={"default": io})
    with pytest.raises(ConnectionError):
        p.run("invoice", run_id="crashed")
    # the value was written first; the metadata commit failed: an orphan value, no record
    [orphan] = io.stored
    assert io.exists(orphan)
    assert not p.exists("invoice")
    assert p.store.list_materializations("billing", asset="invoice") == []
    # a later run is not confused by the orphan and writes its own run-scoped value
    again = p.run("invoice")
    assert again.value == {"total": 120}
    [mat] = p.store.list_materializations("billing", asset="invoice")
    assert mat.location != orphan and mat.run_id == again.run_id
    p.close()


def test_seed_failed_io_leaves_no_materialization(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def invoice() -> dict[str, int]:
        return {"total": 120}

    p = make_pipeline([invoice], io_managers={"default": _RecordingIO(None, fail=True)})
    result = p.run("invoice")
    assert result.status == "failed" and "disk full" in (result.error or "")
    assert not p.exists("invoice")
    mats = p.store.list_materializations("test", asset="invoice")
    assert all(m.state == "failed" and m.location is None for m in mats)
    with pytest.raises(fs.ValueNotFoundError):
        p.get("invoice")


# --- unencodable values -------------------------------------------------------------------


def test_seed_unencodable_value_fails_asset_clearly(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def handlers() -> dict[str, Any]:
        return {"on_click": lambda: None}

    @fs.asset
    def page(handlers: Any) -> str:
        return "rendered"

    p = make_pipeline([handlers, page])
    result = p.run("page")
    assert result.status == "failed"
    error = result.error or ""
    assert "EncodingError" in error and "'handlers'" in error and "function" in error
    assert not p.exists("handlers")
    with pytest.raises(fs.AssetFailedError) as err:
        result.raise_for_status()
    assert err.value.asset == "handlers"


# --- defaults are not overridden by None --------------------------------------------------


def test_seed_defaults_not_overridden_by_none(store_url: str) -> None:
    @fs.asset(requires=["db"], retry=None, timeout=None, partitions=None)
    def customers(context: fs.Context) -> str:
        return str(context.resources.db)

    p = fs.Pipeline(
        "crm",
        [customers],
        store=store_url,
        resources={"db": "crm-db"},
        executor=None,
        scatter_coordinator=None,
        parallel_coordinator=None,
        io_managers=None,
    )
    assert isinstance(p.executor, fs.InProcessExecutor)
    assert p.scatter_coordinator.name == "inline" and p.parallel_coordinator.name == "thread"
    assert customers.retry == fs.RetryPolicy()
    result = p.run("customers", None, run_id=None, tags=None, timeout=None)
    assert result.value == "crm-db"  # the declared resource reached the context
    p.close()


# --- lineage failures surfaced ------------------------------------------------------------


class _BrokenLineage:
    def on_event(self, event: fs.Event) -> None:
        if event.kind == "lineage.recorded":
            raise RuntimeError("openlineage endpoint refused")


def test_seed_lineage_failures_surfaced(
    make_pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    @fs.asset
    def sales() -> int:
        return 10

    @fs.asset
    def forecast(sales: int) -> int:
        return sales * 2

    logged = make_pipeline([sales, forecast], observers=[_BrokenLineage()])
    with caplog.at_level(logging.ERROR, logger="flowstone"):
        result = logged.run("forecast")
    assert result.status == "succeeded" and result.value == 20
    assert logged.stats["lineage_errors"] == 2
    assert any("lineage observer" in r.getMessage() for r in caplog.records)
    mat = next(m for m in result.materializations if m.asset == "forecast")
    assert "openlineage endpoint refused" in mat.metadata["lineage_error"]

    strict = make_pipeline(
        [sales, forecast], name="strict", observers=[_BrokenLineage()], on_lineage_error="fail"
    )
    failed = strict.run("forecast")
    assert failed.status == "failed"
    assert "lineage emission failed" in (failed.error or "")
    assert not strict.exists("sales")


# --- bounded backfill with timeouts -------------------------------------------------------


def test_seed_backfill_bounded_with_timeouts(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    days = fs.DailyPartitions("2024-03-01", "2024-03-08")
    slow_day = date(2024, 3, 5)
    release = threading.Event()

    @fs.asset(partitions=days)
    def daily_sales(context: fs.Context) -> int:
        counter.enter()
        try:
            counter.hit(context.partition)
            if context.partition == slow_day:
                release.wait(10)  # a runaway partition
            else:
                threading.Event().wait(0.02)
            return context.partition.day
        finally:
            counter.leave()

    progress: list[fs.backfill.BackfillProgress] = []  # type: ignore[attr-defined]
    p = make_pipeline([daily_sales])
    try:
        # generous for the healthy days even on a loaded CI machine; the slow one waits 10 s
        result = p.backfill("daily_sales", parallel=3, timeout=1.5, progress=progress.append)
        still_running = not release.is_set() and counter.active == 1
    finally:
        release.set()
    for _ in range(500):  # let the abandoned asset finish before the store closes
        if counter.active == 0:
            break
        threading.Event().wait(0.01)
    assert still_running  # the backfill did not wait for the runaway partition
    assert result.failed == [slow_day]
    assert "timed out after 1.5s" in result.errors[slow_day.isoformat()]
    assert sorted(result.succeeded) == [d for d in days.keys(now=None) if d != slow_day]
    assert counter.peak <= 3 and result.parallel == 3
    assert len(progress) == 8 and progress[-1].done == 8 and progress[-1].total == 8
    assert {pr.status for pr in progress} == {"succeeded", "failed"}
    assert not p.exists("daily_sales", slow_day)
    # a second backfill skips what exists and runs only the failed day
    again = p.backfill("daily_sales", parallel=100)
    assert again.skipped and sorted(again.succeeded) == [slow_day]
    assert again.parallel <= max(4, 2 * (__import__("os").cpu_count() or 1))


# --- no per-call plugin resolution --------------------------------------------------------


def test_seed_no_plugin_resolution_in_hot_path(
    make_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def chain() -> list[fs.AssetDef]:
        assets = [fs.asset(name="step_0")(lambda: 0)]
        for i in range(1, 50):
            prev = f"step_{i - 1}"
            assets.append(
                fs.asset(name=f"step_{i}", deps=[prev])(lambda **kw: sum(kw.values()) + 1)
            )
        return assets

    p = make_pipeline(chain())
    calls: list[str] = []

    def spy(name: str) -> Any:
        def fail(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(f"{name}{args[:2]}")
            raise AssertionError("plugin resolution in the hot path")

        return fail

    monkeypatch.setattr(PluginRegistry, "load", spy("load"))
    monkeypatch.setattr(PluginRegistry, "create", spy("create"))
    result = p.run("step_49")
    assert result.value == 49 and len(result.steps) == 50
    assert calls == []


# --- health -------------------------------------------------------------------------------


def test_seed_health_check_covers_store_executor_resources(store_url: str) -> None:
    @fs.asset(requires=["api"])
    def prices(context: fs.Context) -> int:
        return 1

    healthy = {"ok": True}
    api = fs.Resource(setup=lambda: healthy, health=lambda c: bool(c["ok"]))
    p = fs.Pipeline("prices", [prices], store=store_url, resources={"api": api})
    report = p.health()
    assert report == {
        "store": "ok",
        "executor": "ok",
        "resources": {"api": "not built"},
        "ok": True,
    }
    p.run("prices")
    assert p.health()["resources"] == {"api": "ok"}
    healthy["ok"] = False
    report = p.health()
    assert report["ok"] is False and report["resources"]["api"].startswith("error")

    class DownStore(_FinishFailsOnce):
        def ping(self) -> None:
            raise ConnectionError("database unreachable")

    broken = fs.Pipeline(
        "prices2", [prices], store=DownStore(_store(store_url)), resources={"api": "static"}
    )
    report = broken.health()
    assert report["ok"] is False and "database unreachable" in report["store"]
    assert report["executor"] == "ok"
    p.close()
    broken.close()


def test_flowstone_home_is_respected(tmp_path: Path) -> None:
    @fs.asset
    def one() -> int:
        return 1

    p = fs.Pipeline("home", [one])  # default store: SQLite under FLOWSTONE_HOME
    assert p.run("one").value == 1
    p.close()
    assert (tmp_path / "home" / "flowstone.db").exists()
