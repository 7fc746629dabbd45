"""Starting runs: plan, create in the store, hand the ready steps to the executor.

What :meth:`~flowstone.Pipeline.run` and :meth:`~flowstone.Pipeline.run_many` do between
validating their arguments and returning a :class:`~flowstone.runs.RunResult`.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flowstone.engine.plan import Planner, validate_key
from flowstone.errors import UsageError
from flowstone.partitions import PartitionKey, encode_partition
from flowstone.records import RunRecord, StepRecord, StepSpec

if TYPE_CHECKING:
    from flowstone.engine.runner import StepRunner
    from flowstone.runtime import Runtime

__all__ = [
    "Started", "dispatch", "dispatch_many", "run_key", "start", "start_many", "targets",
]

_RUN_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
Started = tuple[RunRecord, tuple[StepRecord, ...]]


def targets(runtime: Runtime, target: str | Sequence[str] | None) -> list[str]:
    """The asset names a run materializes (None: every asset)."""
    if target is None:
        return list(runtime.graph.order)
    names = [target] if isinstance(target, str) else list(target)
    if not names:
        raise UsageError("run() needs at least one target asset (or None for all)")
    return [runtime.graph[n].name for n in names]


def run_key(
    runtime: Runtime, names: Sequence[str], key: PartitionKey | None
) -> PartitionKey | None:
    """``key`` validated against every target's partition set (None: unpartitioned)."""
    for name in names:
        key = validate_key(runtime.graph[name], key) if key is not None else key
    return key


def start(
    runtime: Runtime,
    names: list[str],
    partition: PartitionKey | None,
    *,
    force: bool = False,
    with_deps: bool = True,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Started:
    """Plan and create a run; return it with its ready steps (not dispatched yet)."""
    record, steps = _plan(
        runtime, names, partition, force=force, with_deps=with_deps, run_id=run_id, tags=tags
    )
    ready = runtime.store.create_run(record, steps)
    _started(runtime, record, len(steps))
    return record, ready


def start_many(
    runtime: Runtime,
    names: list[str],
    partitions: Sequence[PartitionKey | None],
    *,
    force: bool = False,
    tags: Mapping[str, str] | None = None,
) -> list[Started]:
    """Plan and create one run per partition; return them with their ready steps (not
    dispatched yet). A store with :class:`~flowstone.protocols.BulkRunCreation` creates
    them all in one transaction (all or none); otherwise one after the other."""
    planned = [_plan(runtime, names, key, force=force, tags=tags) for key in partitions]
    bulk = runtime.capabilities.bulk_run_creation
    if bulk is not None and len(planned) > 1:
        created = bulk.create_runs(planned)
    else:
        created = [runtime.store.create_run(record, steps) for record, steps in planned]
    started: list[Started] = []
    for (record, steps), ready in zip(planned, created, strict=True):
        _started(runtime, record, len(steps))
        started.append((record, ready))
    return started


def _plan(
    runtime: Runtime,
    names: list[str],
    partition: PartitionKey | None,
    *,
    force: bool,
    with_deps: bool = True,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[RunRecord, list[StepSpec]]:
    planner = Planner(runtime.graph, runtime.store, runtime.name)
    steps = planner.plan(names, partition, force=force, with_deps=with_deps)
    enc = encode_partition(run_key(runtime, names, partition))
    rid = run_id or uuid.uuid4().hex
    if not _RUN_ID.match(rid):
        raise UsageError(f"run_id {rid!r} must be 1-64 letters, digits, '_' or '-'")
    now = datetime.now(UTC)
    record = RunRecord(
        rid, runtime.name, tuple(names), enc, "running", now, now, tags=dict(tags or {})
    )
    return record, list(steps)


def _started(runtime: Runtime, record: RunRecord, steps: int) -> None:
    runtime.events.emit(
        "run.started", record.run_id, partition=record.partition,
        data={"targets": list(record.targets), "steps": steps},
    )  # fmt: skip


def dispatch(
    runner: StepRunner, run_id: str, ready: Sequence[StepRecord], seconds: float | None
) -> None:
    """Hand ``ready`` to the executor; a blocking (in-process) one is cancelled after
    ``seconds`` and the run recorded as timed out."""
    if not ready:
        return
    rt = runner.runtime
    timer: threading.Timer | None = None
    if seconds is not None and rt.executor.blocking:
        timer = threading.Timer(seconds, time_out, args=(runner, run_id, seconds))
        timer.daemon = True
        timer.start()
    try:
        rt.executor.dispatch(runner, run_id, ready)
    finally:
        if timer is not None:
            timer.cancel()
            # the executor returns as soon as it sees the run cancelled; wait for a
            # firing timer to also record why, so the result says "timed out"
            timer.join()


def dispatch_many(runner: StepRunner, started: Sequence[Started], seconds: float | None) -> None:
    """Hand the ready steps of many runs over together where the executor can
    (:class:`~flowstone.protocols.BatchDispatch`), else one run at a time."""
    rt = runner.runtime
    many = rt.capabilities.batch_dispatch
    if rt.executor.blocking or many is None:
        for record, ready in started:
            dispatch(runner, record.run_id, ready, seconds)
    else:
        many.dispatch_many(runner, [(record.run_id, ready) for record, ready in started if ready])


def time_out(runner: StepRunner, run_id: str, seconds: float) -> None:
    """Cancel ``run_id`` and record that it timed out."""
    store = runner.runtime.store
    if store.cancel_run(run_id):
        store.set_run_status(run_id, "cancelled", error=f"timed out after {seconds:g}s")
        store.append_audit(run_id, "run_timed_out", detail={"timeout_s": seconds})
