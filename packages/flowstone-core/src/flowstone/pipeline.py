"""``Pipeline``: a validated set of assets plus where their runs, values and work go.

The class is the public facade. What it does is in modules named after the concept:
building the parts (:mod:`flowstone.configuration`), running (:mod:`flowstone.running`,
:mod:`flowstone.engine`), values (:mod:`flowstone.engine.values`), waits
(:mod:`flowstone.engine.resume`). Running needs only the frozen
:class:`~flowstone.runtime.Runtime` the pipeline builds, never the pipeline itself.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

from flowstone import configuration as config
from flowstone import running
from flowstone._pipeline_config import RuntimeView
from flowstone._pipeline_values import ValueReads
from flowstone._pipeline_waits import Waits
from flowstone.asset import AssetDef
from flowstone.backfill import (
    DEFAULT_PARTITION_TIMEOUT,
    BackfillProgress,
    BackfillResult,
    run_backfill,
)
from flowstone.configuration import flowstone_home
from flowstone.dag import AssetGraph
from flowstone.engine.runner import StepRunner
from flowstone.engine.scatter_retry import RETRY_TAG, check_retry
from flowstone.engine.timeouts import branch_index
from flowstone.engine.values import ValueLayer
from flowstone.errors import DefinitionError, RunNotFoundError, UsageError
from flowstone.events import Emitter, Event
from flowstone.lineage import Lineage
from flowstone.outcomes import to_seconds
from flowstone.partitions import PartitionKey, PartitionSet
from flowstone.protocols import (
    Closeable,
    Executor,
    IOManager,
    Observer,
    ParallelCoordinator,
    RunStore,
    ScatterCoordinator,
)
from flowstone.records import RunRecord
from flowstone.registry import PluginRegistry
from flowstone.resources import ResourceManager
from flowstone.runs import RunResult, wait_for_runs
from flowstone.runtime import Capabilities, Policies, Runtime

__all__ = ["Pipeline", "flowstone_home"]

log = logging.getLogger("flowstone")
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_START_CHUNK = 128  # runs run_many creates (one transaction) and hands over at a time


class Pipeline(RuntimeView, ValueReads, Waits):
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
        scatter_coordinator / parallel_coordinator: objects or plugin names (default:
            what the executor prefers, else the in-process ones).
        route_retention: how long route decisions are kept (pruned by the daemon).
        value_retention: how old a value no record points at (a fenced-out attempt's, or
            one whose runner died before finishing) must be before ``prune()`` deletes it;
            longer than your longest step (default one day).
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
        scatter_coordinator: ScatterCoordinator | str | None = None,
        parallel_coordinator: ParallelCoordinator | str | None = None,
        route_retention: timedelta | float = timedelta(days=30),
        value_retention: timedelta | float = timedelta(days=1),
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
        self.store_url, self.store = config.resolve_store(store, self.registry)
        self._owns_store = True
        self._derived_io = "default" not in (io_managers or {})  # the store's own
        self._io = config.resolve_io_managers(
            io_managers or {}, self.store, self.store_url, self.registry
        )
        for a in self.dag.assets.values():
            if a.io_manager is not None and a.io_manager not in self._io:
                raise DefinitionError(
                    f"asset {a.name!r} uses io_manager={a.io_manager!r}, but the pipeline declares "
                    f"{sorted(self._io)}; add it to Pipeline(io_managers={{...}})"
                )
        self._coordinators = (scatter_coordinator, parallel_coordinator)
        self.events = Emitter(name, config.resolve_observers(observers, self.registry))
        self.schedules = tuple(schedules)
        self.sensors = tuple(sensors)
        self._policies = Policies(
            lease_seconds=float(lease_seconds),
            on_lineage_error=on_lineage_error,
            route_retention=to_seconds(route_retention, what="route_retention") or 0.0,
            value_retention=to_seconds(value_retention, what="value_retention") or 0.0,
        )
        self.branch_index = branch_index(self.dag)
        self.runner = self._build(config.resolve_executor(executor, self.registry))
        self.lineage = Lineage(self)

    # --- configuration -------------------------------------------------------------
    def use_executor(
        self, executor: Executor | str, *, lease_seconds: float | None = None
    ) -> None:
        """Switch the executor (object or plugin name, e.g. ``"celery"``) and optionally
        the lease; the scatter and parallel coordinators follow the executor unless they
        were given explicitly. Rebuilds the :attr:`runtime` and the runner."""
        if lease_seconds is not None:
            self._policies = dataclasses.replace(self._policies, lease_seconds=float(lease_seconds))
        old, self.runner = self.runner, self._build(executor)
        old.close()

    def _build(
        self, executor: Executor | str, coordinators: config.Coordinators | None = None
    ) -> StepRunner:
        """Build :attr:`runtime` around ``executor`` (and the coordinators it prefers,
        unless given) and a runner for it."""
        chosen = config.resolve_executor(executor, self.registry)
        if coordinators is None:
            scatter, parallel = self._coordinators
            coordinators = config.resolve_coordinators(chosen, scatter, parallel, self.registry)
        capabilities = Capabilities.detect(self.store, self._io, chosen)
        self.runtime = Runtime(
            name=self.name,
            graph=self.dag,
            store=self.store,
            values=ValueLayer(self._io, capabilities, self.events),
            events=self.events,
            resources=self.resources,
            policies=self._policies,
            capabilities=capabilities,
            executor=chosen,
            scatter_coordinator=coordinators.scatter,
            parallel_coordinator=coordinators.parallel,
            branch_index=self.branch_index,
            store_url=self.store_url,
        )
        return StepRunner(self.runtime)

    def use_store(self, store: RunStore, *, owned: bool = True) -> None:
        """Switch the run store, e.g. to one the pipelines of a worker share (one
        connection budget: ``FlowstoneCelery.add_pipeline`` does this for pipelines built
        from the same URL). The default IO manager, when it came from the old store, is
        taken from the new one. With ``owned=False`` :meth:`close` leaves the store open:
        whoever shares it closes it. Rebuilds the :attr:`runtime` and the runner."""
        if not isinstance(store, RunStore):
            raise UsageError(f"use_store() takes a RunStore, got {type(store).__name__}")
        if store is self.store:
            self._owns_store = owned
            return
        old_store, old_io = (self.store if self._owns_store else None), self._io
        self.store, self._owns_store = store, owned
        if self._derived_io:
            given = {k: v for k, v in old_io.items() if k != "default"}
            self._io = config.resolve_io_managers(given, store, self.store_url, self.registry)
        rt = self.runtime
        keep = config.Coordinators(rt.scatter_coordinator, rt.parallel_coordinator)
        old, self.runner = self.runner, self._build(rt.executor, keep)
        old.close()
        replaced = [old_io["default"]] if self._derived_io else []
        for part in (*replaced, old_store):
            if isinstance(part, Closeable):
                try:
                    part.close()
                except Exception as exc:  # never used; do not fail the switch
                    log.warning("closing the replaced %s failed: %s", type(part).__name__, exc)

    @property
    def executor(self) -> Executor:
        return self.runtime.executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        """Swap the executor alone, keeping the coordinators (see :meth:`use_executor`)."""
        rt = self.runtime
        keep = config.Coordinators(rt.scatter_coordinator, rt.parallel_coordinator)
        old, self.runner = self.runner, self._build(executor, keep)
        old.close()

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
        polls the store until the run settles. With ``timeout`` a run still running after
        that many seconds is cancelled (status ``cancelled``, error "timed out"), on any
        executor; a run waiting for an approval or a signal is left waiting.
        Returns a :class:`RunResult` (never raises for asset failures: check ``.status``).
        """
        names = running.targets(self.runtime, target)
        seconds = to_seconds(timeout, what="timeout")
        record, ready = running.start(
            self.runtime, names, partition,
            force=force, with_deps=with_deps, run_id=run_id, tags=tags,
        )  # fmt: skip
        running.dispatch(self.runner, record.run_id, ready, seconds)
        if not self.executor.blocking:
            if not wait and ready:  # started, and nothing ran here: no need to read it back
                return RunResult(self, record)
            if wait:
                result = self.wait(record.run_id, timeout=seconds)[0]
                if seconds is None or result.status != "running":
                    return result
                # as in-process: a run still going at the timeout is cancelled, not left
                running.time_out(self.runner, record.run_id, seconds)
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

        With a queue-based executor the runs are created 128 at a time (in one transaction
        where the store offers :class:`~flowstone.protocols.BulkRunCreation`) and each
        chunk's ready steps are handed over together: the Celery executor puts up to
        ``FLOWSTONE_BATCH_STEPS`` steps of *different* runs in one message, so a thousand
        runs cost a fraction of the messages (a run's own steps still go to different
        workers), and workers start on the first runs while the next are created. ``wait``
        then waits for all of them (``timeout`` bounds the whole wait, see :meth:`wait`);
        without it the results come back ``running``. With the in-process executor the
        runs execute one after the other in this call, as ``run`` would.

        Example:
            >>> started = pipeline.run_many("daily_report", days, wait=False)
        """
        if isinstance(partitions, str | bytes) or not isinstance(partitions, Iterable):
            raise UsageError(
                f"run_many() takes a list of partition keys, got {partitions!r}; for one "
                "partition use run(target, partition)"
            )
        keys = list(partitions)
        names = running.targets(self.runtime, target)
        seconds = to_seconds(timeout, what="timeout")
        for key in keys:  # every key checked before any run starts: all or nothing
            running.run_key(self.runtime, names, key)
        started: list[running.Started] = []
        # created and handed over in chunks: workers start on the first runs while the
        # next are created (each chunk in one transaction where the store can)
        for at in range(0, len(keys), _START_CHUNK):
            chunk = running.start_many(
                self.runtime, names, keys[at : at + _START_CHUNK], force=force, tags=tags
            )
            running.dispatch_many(self.runner, chunk, seconds)
            started.extend(chunk)
        if wait or self.executor.blocking:
            return self.wait([record.run_id for record, _ in started], timeout=seconds)
        return [RunResult(self, record) for record, _ in started]

    def dispatch(self, run_id: str, ready: Sequence[Any]) -> None:
        """Hand ready steps to the executor (used by resume paths and sweepers)."""
        self.runner.dispatch(run_id, tuple(ready))

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
        records = wait_for_runs(
            self.store, ids, timeout=seconds, deferred_assets=scatters,
            bulk=self.runtime.capabilities.bulk_run_reads,
        )  # fmt: skip
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
        name = check_retry(self.runtime, run_id, asset, partition)
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
        """Run ``target`` for many partitions (see :func:`flowstone.backfill.run_backfill`:
        ``partitions`` a set or list (default: the target's set, optionally ``start``..
        ``end``); ``parallel`` in flight (capped at 2 x CPUs); ``timeout`` per partition;
        ``skip_existing`` unless ``force``; ``progress`` called after each partition)."""
        return run_backfill(
            self, target, partitions, start=start, end=end, parallel=parallel,
            timeout=timeout, skip_existing=skip_existing, force=force, progress=progress,
        )  # fmt: skip

    # --- events ---------------------------------------------------------------------------
    def emit(self, event: Event) -> str | None:
        """Hand ``event`` to every observer (see :class:`~flowstone.events.Emitter`)."""
        return self.events.send(event)

    def close(self) -> None:
        """Stop lease renewal, tear down resources, close the IO managers, the executor,
        the coordinators and the store (each at most once; errors are logged)."""
        self.runner.close()
        errors = list(self.resources.close())
        closed: set[int] = set()
        rt = self.runtime
        parts: list[object] = [
            *self._io.values(), rt.scatter_coordinator, rt.parallel_coordinator, rt.executor,
            *([self.store] if self._owns_store else []),
        ]  # fmt: skip
        for part in parts:
            if id(part) in closed or not isinstance(part, Closeable):
                continue
            closed.add(id(part))
            try:
                part.close()
            except Exception as exc:
                errors.append(f"closing {type(part).__name__} failed: {exc}")
        for err in errors:
            log.warning("%s", err)

    def __repr__(self) -> str:
        return f"<Pipeline {self.name} assets={len(self.dag.order)}>"
