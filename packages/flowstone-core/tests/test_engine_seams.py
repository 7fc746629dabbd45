"""The seams inside the engine: a pinned engine API for plugins, no engine module that
needs the whole Pipeline, capabilities checked once, and every advertised event emitted."""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs
import flowstone.engine as engine
from flowstone.events import EVENT_KINDS, Event
from flowstone.protocols import (
    BatchLoading,
    BulkRunReads,
    ContinuationReads,
    StagingStore,
    StorageKey,
)
from flowstone.runtime import Capabilities

ROOT = Path(__file__).resolve().parents[3]
CORE = ROOT / "packages" / "flowstone-core" / "src" / "flowstone"

ENGINE_API = [
    "Capabilities",
    "ClaimedAhead",
    "DepOutcome",
    "FinishBatch",
    "Inputs",
    "ParallelRequest",
    "Policies",
    "Runtime",
    "ScatterRequest",
    "StepResult",
    "StepRunner",
    "StoredValue",
    "ValueLayer",
    "Watch",
    "bind_arguments",
    "call_with_timeout",
    "complete_deferred",
    "describe_error",
    "item_key",
    "release_step",
    "resolve_inputs",
    "run_chain",
]


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports (``from X import ...`` and ``import X``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_the_engine_api_for_plugins_is_pinned() -> None:
    assert sorted(engine.__all__) == ENGINE_API
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_no_engine_module_imports_the_pipeline() -> None:
    for path in sorted((CORE / "engine").glob("*.py")):
        assert "flowstone.pipeline" not in _imports(path), f"{path.name} imports the Pipeline"
    for name in ("runtime.py", "running.py", "configuration.py"):
        assert "flowstone.pipeline" not in _imports(CORE / name), name


def test_plugins_use_only_the_public_engine_api() -> None:
    """Plugins import ``flowstone.engine`` itself, never its submodules (internal)."""
    offenders = []
    for path in sorted((ROOT / "plugins").glob("flowstone-*/src/**/*.py")):
        for module in _imports(path):
            if module.startswith("flowstone.engine."):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert offenders == []


def test_the_engine_finds_no_capability_by_name() -> None:
    """Optional methods are declared protocols checked once, never probed with getattr."""
    for path in sorted((CORE / "engine").glob("*.py")):
        assert "getattr(" not in path.read_text(encoding="utf-8"), path.name


class _Loads:
    """An IO manager with the BatchLoading capability that counts its round trips."""

    name = "loads"

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.batches = 0
        self.single = 0

    def store(self, key: StorageKey, value: object) -> str:
        location = f"{key.asset}/{key.partition}/{key.run_id}/{key.attempt}"
        self.values[location] = value
        return location

    def load(self, location: str) -> object:
        self.single += 1
        return self.values[location]

    def load_many(self, locations: Sequence[str]) -> list[object]:
        self.batches += 1
        return [self.values[loc] for loc in locations]

    def exists(self, location: str) -> bool:
        return location in self.values

    def delete(self, location: str) -> None:
        self.values.pop(location, None)


@fs.asset
def left() -> int:
    return 1


@fs.asset
def right() -> int:
    return 2


@fs.asset
def both(left: int, right: int) -> int:
    return left + right


def test_capabilities_are_read_once_from_what_the_plugins_declare() -> None:
    loads = _Loads()
    p = fs.Pipeline("caps", [left, right, both], store="memory://", io_managers={"default": loads})
    caps = p.runtime.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.batch_loading == {"default": loads} and isinstance(loads, BatchLoading)
    assert caps.continuation_reads is p.store and isinstance(p.store, ContinuationReads)
    assert caps.bulk_run_reads is p.store and isinstance(p.store, BulkRunReads)
    assert caps.staging == {} and not isinstance(p.store, StagingStore)
    assert caps.batch_dispatch is None  # the in-process executor has no dispatch_many
    result = p.run("both")
    # the join read its two inputs with one load_many, not two loads
    assert (loads.batches, loads.single) == (1, 0)
    assert result.value == 3
    p.close()


def test_values_are_stored_per_attempt() -> None:
    loads = _Loads()
    attempts: list[int] = []

    @fs.asset(retry=fs.RetryPolicy(max_attempts=2, base_delay=0))
    def flaky(context: fs.Context) -> int:
        attempts.append(context.attempt)
        if context.attempt == 1:
            raise RuntimeError("first attempt fails")
        return 7

    p = fs.Pipeline("per_attempt", [flaky], store="memory://", io_managers={"default": loads})
    result = p.run("flaky")
    assert result.value == 7 and attempts == [1, 2]
    (mat,) = [m for m in result.materializations if m.asset == "flaky"]
    assert mat.location is not None and mat.location.endswith("/2")  # attempt 2 wrote it
    p.close()


class _Recorder:
    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        with self.lock:
            self.kinds.add(event.kind)


class _Broken:
    def on_event(self, event: Event) -> None:
        if event.kind == "run.started":
            raise RuntimeError("observer is down")


def test_every_advertised_event_kind_is_emitted_by_some_path(tmp_path: Path) -> None:
    seen = _Recorder()

    @fs.router(branches=["small", "large"])
    def size(numbers: list[int]) -> str:
        return "small"

    @fs.asset
    def numbers() -> list[int]:
        return [1, 2]

    @fs.asset(routed_from="size")
    def small(numbers: list[int]) -> int:
        return sum(numbers)

    @fs.asset(routed_from="size")
    def large(numbers: list[int]) -> int:
        return -1

    attempts: list[int] = []

    @fs.asset(retry=fs.RetryPolicy(max_attempts=2, base_delay=0))
    def wobbly(context: fs.Context) -> int:
        attempts.append(context.attempt)
        if len(attempts) == 1:
            raise RuntimeError("once")
        return 1

    @fs.asset
    def boom() -> int:
        raise RuntimeError("always")

    @fs.asset
    def trade(numbers: list[int]) -> Any:
        return fs.WaitForApproval(message="ok?", value=sum(numbers))

    tokens: list[str] = []  # what the "external system" receives

    @fs.asset(on_signal=lambda context, payload: payload["v"])
    def callback(context: fs.Context) -> Any:
        gate = context.signal_gate()
        tokens.append(gate.token)
        return gate

    @fs.asset(on_timeout=lambda context: 0)
    def lapsing(context: fs.Context) -> Any:
        return context.signal_gate(timeout=0.001)

    @fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers))
    def each(context: fs.Context, numbers: list[int]) -> int:
        return int(context.scatter_item) * 2

    p = fs.Pipeline(
        "every_kind",
        [numbers, size, small, large, wobbly, boom, trade, callback, lapsing, each],
        store=f"sqlite:///{tmp_path / 'fs.db'}",
        observers=[_Broken(), seen],
    )
    p.run(["small", "large", "wobbly", "each"])
    p.run("boom")
    run = p.run("trade")
    (approval,) = p.approvals()
    p.approve(approval.id, by="alice")
    p.run("callback")
    p.signal(tokens[0], {"v": 1})
    p.run("lapsing")
    time.sleep(0.01)
    p.expire_due()
    assert p.result(run.run_id).status == "succeeded"
    missing = EVENT_KINDS - seen.kinds
    assert missing == set(), f"advertised but never emitted: {sorted(missing)}"
    assert p.stats["observer_errors"] >= 1
    p.close()


class _Describing(_Loads):
    """An IO manager with DescribedStorage: it says what it wrote, and honours the asset's
    ``format`` metadata, which reaches it through the StorageKey."""

    def __init__(self) -> None:
        super().__init__()
        self.formats: list[object] = []

    def store_described(self, key: StorageKey, value: object) -> tuple[str, dict[str, Any]]:
        self.formats.append(key.metadata.get("format"))
        location = self.store(key, value)
        return location, {"size": len(repr(value)), "format": key.metadata.get("format", "json")}


def test_an_io_manager_can_describe_what_it_stored() -> None:
    io = _Describing()

    @fs.asset(metadata={"format": "parquet"})
    def table() -> list[int]:
        return [1, 2, 3]

    p = fs.Pipeline("described", [table], store="memory://", io_managers={"default": io})
    result = p.run("table")
    (mat,) = [m for m in result.materializations if m.asset == "table"]
    assert mat.metadata["value"] == {"size": 9, "format": "parquet"}
    assert io.formats == ["parquet"]
    assert result.value == [1, 2, 3]
    p.close()


class _FlakyValues(_Loads):
    """An IO manager whose first write fails the way a dropped connection does."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def store(self, key: StorageKey, value: object) -> str:
        if self.failures:
            self.failures -= 1
            raise fs.StorageError("connection to the value store was lost")
        return super().store(key, value)


@pytest.mark.parametrize("store_url", ["memory://", "sqlite"])
def test_an_infrastructure_error_is_retried_not_the_assets_failure(
    store_url: str, tmp_path: Path
) -> None:
    """The engine's own write failing (the store or the value write) is not the asset's
    failure: the claim is released and the step runs again, with no lease to wait out."""
    calls: list[int] = []

    @fs.asset
    def report(context: fs.Context) -> int:
        calls.append(context.attempt)
        return 42

    url = store_url if store_url != "sqlite" else f"sqlite:///{tmp_path / 'fs.db'}"
    io = _FlakyValues()
    p = fs.Pipeline("infra", [report], store=url, io_managers={"default": io}, lease_seconds=600)
    result = p.run("report")
    assert result.status == "succeeded" and result.value == 42
    assert calls == [1, 2]  # user code ran again (at-least-once), recorded once
    mats = p.store.list_materializations("infra", asset="report")
    assert [m.state for m in mats] == ["succeeded"]
    audit = [e.kind for e in p.store.list_audit(result.run_id)]
    assert "step_failed" not in audit
    p.close()


@pytest.mark.parametrize("key", [("run-1", "orders", ""), ("r", "a/b", "2024-01-05|eu"),
                                 ("ünï", "çödé", "𝄞\x01"), ("", "", "")])  # fmt: skip
def test_materialization_ids_are_the_uuid5_of_the_step(key: tuple[str, str, str]) -> None:
    """Stores keep these ids: the fast derivation must stay exactly uuid5's."""
    import uuid

    from flowstone.engine.runner import _MATERIALIZATIONS, materialization_id

    assert materialization_id(*key) == uuid.uuid5(_MATERIALIZATIONS, "\x00".join(key)).hex
