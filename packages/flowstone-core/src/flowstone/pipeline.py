"""``Pipeline``: a validated set of assets plus where their runs, values and work go."""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from flowstone.asset import AssetDef
from flowstone.backfill import (
    DEFAULT_PARTITION_TIMEOUT,
    BackfillProgress,
    BackfillResult,
    run_backfill,
)
from flowstone.dag import AssetGraph
from flowstone.engine import resume
from flowstone.engine.plan import Planner, validate_key
from flowstone.engine.runner import StepRunner
from flowstone.engine.scatter_retry import RETRY_TAG, check_retry
from flowstone.engine.timeouts import branch_index
from flowstone.errors import (
    DefinitionError,
    RunNotFoundError,
    UnsafeKeyError,
    UsageError,
    ValueNotFoundError,
)
from flowstone.events import Event
from flowstone.lineage import Lineage
from flowstone.outcomes import to_seconds
from flowstone.partitions import PartitionKey, PartitionSet, encode_partition
from flowstone.protocols import Executor, IOManager, Observer, RunStore
from flowstone.records import Approval, MaterializationRecord, RunRecord, StepRecord
from flowstone.registry import PluginRegistry, store_from_url
from flowstone.resources import ResourceManager
from flowstone.runs import RunResult, wait_for_runs

__all__ = ["Pipeline"]

log = logging.getLogger("flowstone")
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def flowstone_home() -> Path:
    """Where the embedded setup keeps its SQLite file and values (``FLOWSTONE_HOME``)."""
    return Path(os.environ.get("FLOWSTONE_HOME", ".flowstone"))


class Pipeline:
    """A named, validated DAG of assets and the services that run it.

    Args:
        name: unique pipeline name (letters, digits, ``_ - .``).
        assets: the ``@asset`` / ``@router`` definitions.
        resources: ``{name: Resource(...) or object}`` available to assets' ``requires``.
        io_managers: ``{name: IOManager or plugin name}``; ``"default"`` is used by assets
            that name none (by default chosen to match the store).
        store: a RunStore, a URL (``sqlite:///path``, ``memory://``,
            ``postgresql+asyncpg://...``) or None for ``FLOWSTONE_DATABASE_URL``, else
            SQLite under ``FLOWSTONE_HOME`` (``.flowstone/``).
        executor: an Executor, a plugin name (``"inprocess"``, ``"celery"``) or None for
            ``FLOWSTONE_EXECUTOR``, else in-process.
        observers: Observers (or plugin names) receiving every event.
        schedules / sensors: run by ``flowstone daemon`` (or Celery beat).
        route_retention: how long route decisions are kept (pruned by the daemon).
        on_lineage_error: ``"log"`` (default: log and count) or ``"fail"`` the asset when an
            observer fails to record lineage.
        lease_seconds: how long a claimed step is owned without renewal before another
            worker may take it over.

    Raises:
        DefinitionError: (and subclasses) for anything wrong in the definition, at once.

    Example:
        >>> pipeline = Pipeline("quickstart", [numbers, doubled, total], store="memory://")
        >>> pipeline.run("total").value
    """

    def __init__(
        self,
        name: str,
        assets: Iterable[AssetDef],
        *,
        resources: Mapping[str, Any] | None = None,
        io_managers: Mapping[str, IOManager | str] | None = None,
        store: RunStore | str | None = None,
        executor: Executor | str | None = None,
        observers: Sequence[Observer | str] = (),
        schedules: Sequence[Any] = (),
        sensors: Sequence[Any] = (),
        scatter_coordinator: Any = None,
        parallel_coordinator: Any = None,
        route_retention: timedelta | float = timedelta(days=30),
        on_lineage_error: Literal["log", "fail"] = "log",
        lease_seconds: float = 300.0,
        registry: PluginRegistry | None = None,
    ) -> None:
        if not isinstance(name, str) or not _PIPELINE_NAME.match(name):
            raise DefinitionError(
                f"pipeline name {name!r} is not valid: use 1-128 letters, digits, '_', '-' or '.'"
            )
        if on_lineage_error not in ("log", "fail"):
            raise DefinitionError("on_lineage_error must be 'log' or 'fail'")
        self.name = name
        self.dag = AssetGraph(list(assets), resources=(resources or {}).keys())
        for a in self.dag.assets.values():
            if a.partitions is not None and not isinstance(a.partitions, PartitionSet):
                raise DefinitionError(
                    f"asset {a.name!r}: partitions= must be a partition set such as "
                    f"DailyPartitions(...), got {type(a.partitions).__name__}"
                )
        self.registry = registry or PluginRegistry()
        self.resources = ResourceManager(resources or {})
        self.store_url, self.store = self._resolve_store(store)
        self._io: dict[str, IOManager] = self._resolve_io(io_managers or {})
        self.default_io_manager = "default"
        for a in self.dag.assets.values():
            if a.io_manager is not None and a.io_manager not in self._io:
                raise DefinitionError(
                    f"asset {a.name!r} uses io_manager={a.io_manager!r}, but the pipeline declares "
                    f"{sorted(self._io)}; add it to Pipeline(io_managers={{...}})"
                )
        self._coordinators = (scatter_coordinator, parallel_coordinator)
        self.use_executor(executor or os.environ.get("FLOWSTONE_EXECUTOR") or "inprocess")
        self.observers: tuple[Observer, ...] = tuple(
            self._resolve(o, "flowstone.observers", "logging") for o in observers
        )
        self.schedules = tuple(schedules)
        self.sensors = tuple(sensors)
        self.route_retention = to_seconds(route_retention, what="route_retention") or 0.0
        self.on_lineage_error = on_lineage_error
        self.lease_seconds = float(lease_seconds)
        self.stats: dict[str, int] = {"observer_errors": 0, "lineage_errors": 0}
        self._stats_lock = threading.Lock()
        self.branch_index = branch_index(self.dag)
        self.runner = StepRunner(self)
        self.lineage = Lineage(self)

    # --- configuration -------------------------------------------------------------
    def _resolve_store(self, store: RunStore | str | None) -> tuple[str | None, RunStore]:
        if store is None:
            store = os.environ.get("FLOWSTONE_DATABASE_URL") or (
                f"sqlite:///{flowstone_home() / 'flowstone.db'}"
            )
        if isinstance(store, str):
            return store, store_from_url(store, self.registry)
        if not isinstance(store, RunStore):
            raise DefinitionError(f"store= must be a RunStore or a URL, got {type(store).__name__}")
        return None, store

    def _resolve_io(self, given: Mapping[str, IOManager | str]) -> dict[str, IOManager]:
        managers: dict[str, IOManager] = {}
        for name, spec in given.items():
            managers[name] = (
                self.registry.create("flowstone.io_managers", spec)
                if isinstance(spec, str)
                else spec
            )
            if not isinstance(managers[name], IOManager):
                raise DefinitionError(f"io_managers[{name!r}] is not an IOManager: {spec!r}")
        if "default" not in managers:
            kind = getattr(self.store, "name", "")
            if kind == "memory":
                managers["default"] = self.registry.create("flowstone.io_managers", "memory")
            elif kind == "sqlite":  # values beside the store: <store>.values.db
                db = Path(getattr(self.store, "path", flowstone_home() / "flowstone.db"))
                managers["default"] = self.registry.create(
                    "flowstone.io_managers", "sqlite", db.with_name(db.stem + ".values.db")
                )
            else:  # a shared store wants shared values: the store's own IO manager
                managers["default"] = self.registry.create(
                    "flowstone.io_managers", kind, url=self.store_url
                )
        return managers

    def _resolve(self, spec: Any, group: str, default: str) -> Any:
        if spec is None:
            spec = default
        if isinstance(spec, str):
            return self.registry.create(group, spec)
        return spec

    def use_executor(self, executor: Executor | str) -> None:
        """Switch the executor (object or plugin name, e.g. ``"celery"``); the scatter and
        parallel coordinators follow it unless they were given explicitly."""
        self.executor: Executor = self._resolve(executor, "flowstone.executors", "inprocess")
        scatter, parallel = self._coordinators
        self.scatter_coordinator = self._resolve(
            scatter,
            "flowstone.scatter_coordinators",
            self._preferred("flowstone.scatter_coordinators", "scatter_coordinator", "inline"),
        )
        self.parallel_coordinator = self._resolve(
            parallel,
            "flowstone.parallel_coordinators",
            self._preferred("flowstone.parallel_coordinators", "parallel_coordinator", "thread"),
        )

    def _preferred(self, group: str, attribute: str, fallback: str) -> str:
        """The coordinator the executor prefers (e.g. Celery's), if that plugin is
        installed; otherwise the in-process one, which works with any executor."""
        preferred = getattr(self.executor, attribute, None)
        if isinstance(preferred, str) and preferred in self.registry.names(group):
            return preferred
        return fallback

    def io_manager(self, name: str) -> IOManager:
        try:
            return self._io[name]
        except KeyError:
            raise DefinitionError(
                f"no IO manager {name!r} in pipeline {self.name!r}; declared: {sorted(self._io)}"
            ) from None

    @property
    def io_manager_names(self) -> tuple[str, ...]:
        """The names of this pipeline's IO managers (``io_manager(name)`` gets one)."""
        return tuple(self._io)

    # --- running ---------------------------------------------------------------------
    def run(
        self,
        target: str | Sequence[str] | None = None,
        partition: PartitionKey | None = None,
        *,
        force: bool = False,
        with_deps: bool = True,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float | timedelta | None = None,
    ) -> RunResult:
        """Materialize ``target`` (default: every asset) for ``partition``.

        Existing materializations are reused unless ``force``. With the in-process
        executor the run executes in this call; with a queue-based executor ``wait``
        polls the store until the run settles (``timeout`` seconds at most).
        Returns a :class:`RunResult` (never raises for asset failures: check ``.status``).
        """
        targets = self._targets(target)
        seconds = to_seconds(timeout, what="timeout")
        record, ready = self._start(targets, partition, force, with_deps, run_id, tags)
        self._dispatch_with_timeout(record.run_id, ready, seconds)
        if not self.executor.blocking:
            if not wait and ready:  # started, and nothing ran here: no need to read it back
                return RunResult(self, record)
            if wait:
                return self.wait(record.run_id, timeout=seconds)[0]
        return self.result(record.run_id)

    def run_many(
        self,
        target: str | Sequence[str] | None,
        partitions: Iterable[PartitionKey],
        *,
        force: bool = False,
        tags: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float | timedelta | None = None,
    ) -> list[RunResult]:
        """Start one run of ``target`` per partition, all at once; their results in order.

        With a queue-based executor every run is created first and their ready steps are
        then handed over together: the Celery executor puts up to ``FLOWSTONE_BATCH_STEPS``
        steps of *different* runs in one message, so a thousand runs cost a fraction of the
        messages (a run's own steps still go to different workers). ``wait`` then waits for
        all of them (``timeout`` bounds the whole wait, see :meth:`wait`); without it the
        results come back ``running``. With the in-process executor the runs execute one
        after the other in this call, as ``run`` would.

        Example:
            >>> started = pipeline.run_many("daily_report", days, wait=False)
        """
        if isinstance(partitions, str | bytes) or not isinstance(partitions, Iterable):
            raise UsageError(
                f"run_many() takes a list of partition keys, got {partitions!r}; for one "
                "partition use run(target, partition)"
            )
        keys = list(partitions)
        targets = self._targets(target)
        seconds = to_seconds(timeout, what="timeout")
        for key in keys:  # every key checked before any run starts: all or nothing
            self._run_key(targets, key)
        started = [self._start(targets, key, force, True, None, tags) for key in keys]
        many = getattr(self.executor, "dispatch_many", None)
        if self.executor.blocking or many is None:
            for record, ready in started:
                self._dispatch_with_timeout(record.run_id, ready, seconds)
        else:
            many(self, [(record.run_id, ready) for record, ready in started if ready])
        if wait or self.executor.blocking:
            return self.wait([record.run_id for record, _ in started], timeout=seconds)
        return [RunResult(self, record) for record, _ in started]

    def _start(
        self,
        targets: list[str],
        partition: PartitionKey | None,
        force: bool,
        with_deps: bool,
        run_id: str | None,
        tags: Mapping[str, str] | None,
    ) -> tuple[RunRecord, tuple[StepRecord, ...]]:
        """Plan and create a run; return it with its ready steps (not dispatched yet)."""
        planner = Planner(self.dag, self.store, self.name)
        steps = planner.plan(targets, partition, force=force, with_deps=with_deps)
        enc = encode_partition(self._run_key(targets, partition))
        rid = run_id or uuid.uuid4().hex
        if not re.match(r"^[A-Za-z0-9_\-]{1,64}$", rid):
            raise UsageError(f"run_id {rid!r} must be 1-64 letters, digits, '_' or '-'")
        now = datetime.now(UTC)
        record = RunRecord(
            rid, self.name, tuple(targets), enc, "running", now, now, tags=dict(tags or {})
        )
        ready = self.store.create_run(record, steps)
        self.emit(
            Event(
                "run.started",
                self.name,
                rid,
                partition=enc,
                data={"targets": list(targets), "steps": len(steps)},
            )
        )
        return record, ready

    def _targets(self, target: str | Sequence[str] | None) -> list[str]:
        if target is None:
            return list(self.dag.order)
        names = [target] if isinstance(target, str) else list(target)
        if not names:
            raise UsageError("run() needs at least one target asset (or None for all)")
        return [self.dag[n].name for n in names]

    def _run_key(self, targets: Sequence[str], key: PartitionKey | None) -> PartitionKey | None:
        for t in targets:
            key = validate_key(self.dag[t], key) if key is not None else key
        return key

    def _dispatch_with_timeout(self, run_id: str, ready: Any, seconds: float | None) -> None:
        if not ready:
            return
        timer: threading.Timer | None = None
        if seconds is not None and self.executor.blocking:
            timer = threading.Timer(seconds, self._time_out, args=(run_id, seconds))
            timer.daemon = True
            timer.start()
        try:
            self.executor.dispatch(self, run_id, ready)
        finally:
            if timer is not None:
                timer.cancel()
                # the executor returns as soon as it sees the run cancelled; wait for a
                # firing timer to also record why, so the result says "timed out"
                timer.join()

    def _time_out(self, run_id: str, seconds: float) -> None:
        if self.store.cancel_run(run_id):
            self.store.set_run_status(run_id, "cancelled", error=f"timed out after {seconds:g}s")
            self.store.append_audit(run_id, "run_timed_out", detail={"timeout_s": seconds})

    def dispatch(self, run_id: str, ready: Any) -> None:
        """Hand ready steps to the executor (used by resume paths and sweepers)."""
        if ready:
            self.executor.dispatch(self, run_id, ready)

    def result(self, run_id: str) -> RunResult:
        run = self.store.get_run(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r} in the store of pipeline {self.name!r}")
        return RunResult(self, run)

    def wait(
        self,
        runs: str | RunResult | Iterable[str | RunResult],
        *,
        timeout: float | timedelta | None = None,
    ) -> list[RunResult]:
        """Wait until every one of ``runs`` (ids or ``RunResult``) settles; return their
        results in the order given.

        For runs started with ``run(..., wait=False)``: the store is polled for many runs
        per read, so waiting for a thousand runs is cheap. ``timeout`` bounds the whole
        wait; runs still going when it passes come back with status ``running``.

        Example:
            >>> started = [pipeline.run("report", day, wait=False) for day in days]
            >>> failed = [r for r in pipeline.wait(started) if not r.ok]
        """
        seconds = to_seconds(timeout, what="timeout")
        items = [runs] if isinstance(runs, str | RunResult) else list(runs)
        ids: list[str] = []
        for item in items:
            if isinstance(item, RunResult):
                ids.append(item.run_id)
            elif isinstance(item, str) and item:
                ids.append(item)
            else:
                raise UsageError(
                    f"wait() takes run ids or RunResults (what run(..., wait=False) returns), "
                    f"got {item!r} ({type(item).__name__})"
                )
        scatters = frozenset(a.name for a in self.dag.assets.values() if a.scatter)
        records = wait_for_runs(self.store, ids, timeout=seconds, deferred_assets=scatters)
        return [RunResult(self, record) for record in records]

    def runs(self, *, status: str | None = None, limit: int = 50) -> list[RunRecord]:
        return self.store.list_runs(pipeline=self.name, status=status, limit=limit)  # type: ignore[arg-type]

    def cancel(self, run_id: str) -> bool:
        """Cancel a run: nothing new starts; running assets finish but are not recorded."""
        return self.store.cancel_run(run_id)

    def resume(self, run_id: str) -> RunResult:
        """Run a failed or cancelled run's unfinished steps again, in the same run.

        Scatter steps keep their succeeded item results and run only the failed items."""
        self.dispatch(run_id, self.store.reopen_run(run_id))
        return self.result(run_id)

    def retry_failed_items(
        self, run_id: str, asset: str, partition: PartitionKey | None = None
    ) -> RunResult:
        """Re-run only the failed items of ``asset``'s scatter in a finished run.

        Starts a NEW run of ``asset`` alone (dependencies reused, downstream not run)
        tagged ``{"retry_failed_items_of": run_id}``: its scatter reuses the succeeded
        item results of ``run_id`` and runs the items that failed or never ran, so the
        new value has every item. The earlier run is left unchanged. For a run that
        FAILED (threshold exceeded) :meth:`resume` also retries in place.

        Raises:
            RunNotFoundError: no run ``run_id`` in this pipeline's store.
            UsageError: ``asset`` is not a scatter asset, the run is not finished, did not
                execute that scatter itself, or ran it for another partition.
        """
        name = check_retry(self, run_id, asset, partition)
        return self.run(name, partition, force=True, with_deps=False, tags={RETRY_TAG: run_id})

    def backfill(
        self,
        target: str,
        partitions: Any = None,
        *,
        start: PartitionKey | None = None,
        end: PartitionKey | None = None,
        parallel: int = 4,
        timeout: float | timedelta | None = DEFAULT_PARTITION_TIMEOUT,
        skip_existing: bool = True,
        force: bool = False,
        progress: Callable[[BackfillProgress], Any] | None = None,
    ) -> BackfillResult:
        """Run ``target`` for many partitions.

        Args:
            partitions: a partition set or a list of keys (default: the target's set,
                optionally limited to ``start``..``end``).
            parallel: partitions in flight at once (capped at 2 x CPUs).
            timeout: per partition (default 30 minutes); a partition that exceeds it is
                cancelled and counted failed.
            skip_existing: skip partitions that already have a value (unless ``force``).
            progress: called with a :class:`~flowstone.backfill.BackfillProgress` after
                each partition.
        """
        return run_backfill(
            self,
            target,
            partitions,
            start=start,
            end=end,
            parallel=parallel,
            timeout=timeout,
            skip_existing=skip_existing,
            force=force,
            progress=progress,
        )

    # --- reading values & state ----------------------------------------------------------
    def _latest(self, asset: str, partition: PartitionKey | None) -> MaterializationRecord | None:
        a = self.dag[asset]
        enc = encode_partition(validate_key(a, partition) if partition is not None else None)
        return self.store.find_materialization(self.name, a.name, enc)

    def get(self, asset: str, partition: PartitionKey | None = None) -> Any:
        """The latest value of ``asset`` for ``partition``."""
        mat = self._latest(asset, partition)
        if mat is None:
            raise ValueNotFoundError(
                f"asset {asset!r} has no materialization for partition "
                f"{encode_partition(partition) or 'none'}; run it first: pipeline.run({asset!r})"
            )
        return self.load_materialization(mat)

    def exists(self, asset: str, partition: PartitionKey | None = None) -> bool:
        return self._latest(asset, partition) is not None

    def status(self, asset: str, partition: PartitionKey | None = None) -> str | None:
        """State of the newest materialization (``succeeded``, ``failed``, ...) or None."""
        a = self.dag[asset]
        enc = encode_partition(partition)
        recs = self.store.list_materializations(self.name, asset=a.name, partition=enc, limit=1)
        return recs[0].state if recs else None

    def invalidate(
        self, asset: str, partition: PartitionKey | None = None, *, all_partitions: bool = False
    ) -> int:
        """Stop reusing ``asset``'s values (one partition, or every one); returns how many."""
        a = self.dag[asset]
        enc = None if all_partitions else encode_partition(partition)
        return self.store.invalidate(self.name, a.name, enc)

    def load_materialization(self, mat: MaterializationRecord, *, run_id: str = "") -> Any:
        if mat.location is None or mat.io_manager is None:
            raise ValueNotFoundError(
                f"materialization {mat.id} of {mat.asset!r} ({mat.state}) has no stored value"
            )
        manager = self.io_manager(mat.io_manager)
        try:
            return manager.load(mat.location)
        except (UnsafeKeyError, ValueNotFoundError) as exc:
            raise ValueNotFoundError(
                f"cannot load {mat.asset!r} (materialization {mat.id}, run {mat.run_id}) from "
                f"{mat.location!r} with IO manager {mat.io_manager!r} ({manager!r}): {exc}. If "
                "the pipeline's io_managers changed since it was stored, configure the old "
                "manager under that name again, or re-run with force=True"
            ) from exc

    def load_materializations(
        self, mats: Sequence[MaterializationRecord], *, run_id: str = ""
    ) -> list[Any]:
        """The values of ``mats``, in order: one ``load_many`` per IO manager that has it
        (one round trip for a step's inputs), ``load`` per value otherwise."""
        by_manager: dict[str, list[int]] = {}
        for i, mat in enumerate(mats):
            if mat.location is not None and mat.io_manager is not None:
                by_manager.setdefault(mat.io_manager, []).append(i)
        out: list[Any] = [None] * len(mats)
        batched: set[int] = set()
        for name, idx in by_manager.items():
            load_many = getattr(self.io_manager(name), "load_many", None)
            if load_many is None or len(idx) < 2:
                continue
            try:
                values = load_many([mats[i].location for i in idx])
            except (UnsafeKeyError, ValueNotFoundError):
                continue  # loaded one by one below, so the error names the record
            for i, value in zip(idx, values, strict=True):
                out[i] = value
            batched.update(idx)
        for i, mat in enumerate(mats):
            if i not in batched:
                out[i] = self.load_materialization(mat, run_id=run_id)
        return out

    def graph(self, format: Literal["ascii", "mermaid", "dot"] = "ascii") -> str:
        return self.dag.render(format)

    # --- approvals & signals ------------------------------------------------------------
    def approvals(self, status: str | None = "pending") -> list[Approval]:
        return self.store.list_approvals(pipeline=self.name, status=status)

    def approve(
        self,
        approval_id: int | None = None,
        *,
        run_id: str | None = None,
        asset: str | None = None,
        partition: PartitionKey | None = None,
        by: str | None = None,
    ) -> RunResult:
        """Approve a pending approval (by id or by run/asset/partition) and resume the run."""
        approval = resume.find_approval(self, approval_id, run_id, asset, partition)
        resume.decide(self, approval, "approved", by=by)
        return self.result(approval.run_id)

    def reject(
        self,
        approval_id: int | None = None,
        *,
        run_id: str | None = None,
        asset: str | None = None,
        partition: PartitionKey | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> RunResult:
        """Reject a pending approval: the asset fails, the run finishes as failed."""
        approval = resume.find_approval(self, approval_id, run_id, asset, partition)
        resume.decide(self, approval, "rejected", by=by, reason=reason)
        return self.result(approval.run_id)

    def signal(self, token: str, payload: Any = None) -> RunResult:
        """Resume the asset waiting on the gate with ``token``; a token works once."""
        run_id = resume.signal(self, token, payload)
        return self.result(run_id)

    # --- housekeeping (daemon / sweeper) ---------------------------------------------------
    def expire_due(self, now: datetime | None = None) -> int:
        """Fail expired approvals and expire gates (running ``on_timeout``)."""
        return resume.expire_due(self, now or datetime.now(UTC))

    def prune(self, now: datetime | None = None) -> int:
        """Delete route decisions older than ``route_retention``."""
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.route_retention)
        return self.store.prune_route_decisions(cutoff)

    def recover(self, now: datetime | None = None, *, ready_for_seconds: float = 30.0) -> int:
        """Re-dispatch steps whose message was lost or whose worker died; finish waiting
        steps whose approval was decided by a process that died before resuming them."""
        return resume.recover(self, now or datetime.now(UTC), ready_for_seconds)

    def health(self) -> dict[str, Any]:
        """``{"ok": bool, "store": ..., "executor": ..., "resources": {...}}``."""
        report: dict[str, Any] = {}
        try:
            self.store.ping()
            report["store"] = "ok"
        except Exception as exc:
            report["store"] = f"error: {exc}"
        check = getattr(self.executor, "health", None)
        report["executor"] = check() if callable(check) else "ok"
        report["resources"] = self.resources.health()
        report["ok"] = (
            report["store"] == "ok"
            and _healthy(report["executor"])
            and all(v in ("ok", "not built") for v in report["resources"].values())
        )
        return report

    # --- events ---------------------------------------------------------------------------
    def emit(self, event: Event) -> str | None:
        """Hand ``event`` to every observer. An observer that raises is logged and
        counted (``stats["observer_errors"]``, or ``"lineage_errors"`` for lineage) and
        never stops the others; the last failure is returned as text."""
        lineage = event.kind == "lineage.recorded"
        error = None
        for obs in self.observers:
            try:
                obs.on_event(event)
            except Exception as exc:
                self._count("lineage_errors" if lineage else "observer_errors")
                kind = "lineage observer" if lineage else "observer"
                log.exception("%s %r failed on %s of %s", kind, obs, event.kind, event.asset)
                error = f"{type(obs).__name__}: {exc}"
        return error

    def emit_lineage(
        self, run_id: str, asset: str, partition: str, upstream: list[str]
    ) -> str | None:
        """Send the lineage event; return an error description if an observer failed."""
        return self.emit(
            Event(
                "lineage.recorded",
                self.name,
                run_id,
                asset,
                partition,
                {"upstream": list(upstream)},
            )
        )

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    def close(self) -> None:
        """Tear down resources, stop lease renewal, close executor and store."""
        self.runner.close()
        for err in self.resources.close():
            log.warning("%s", err)
        self.executor.close()
        self.store.close()

    def __repr__(self) -> str:
        return f"<Pipeline {self.name} assets={len(self.dag.order)}>"


def _healthy(value: Any) -> bool:
    if isinstance(value, Mapping):
        return bool(value.get("ok", True))
    return bool(value == "ok")
