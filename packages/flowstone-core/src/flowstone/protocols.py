"""The plugin contract: every protocol a FlowStone plugin can implement.

Core ships in-process implementations of each (under :mod:`flowstone.defaults`); plugins
implement them on real services and register through entry points (see
:mod:`flowstone.registry`). The contract test suites in :mod:`flowstone.testing` pin the
behaviour every implementation must have.

:class:`RunStore` and the roles it is made of (:class:`RunScheduling`,
:class:`MaterializationLog`, :class:`Waits`, ...) are defined in :mod:`flowstone.run_store`
and re-exported here; the rules every store applies are :mod:`flowstone.store_rules`.

Conventions shared by all protocols:

* partitions are *encoded* strings (:func:`flowstone.partitions.encode_partition`);
  ``""`` means "not partitioned";
* datetimes are timezone-aware UTC;
* every write is idempotent: repeating a call with the same arguments never records twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flowstone.records import (
    Continuation,
    Fence,
    MaterializationRecord,
    RunRecord,
    StagedValue,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)
from flowstone.run_store import (
    AuditLog,
    DefaultIOManager,
    ItemResults,
    MaterializationLog,
    RouteDecisions,
    RunScheduling,
    RunStore,
    StepNotes,
    StoreLifecycle,
    TicksAndCursors,
    Waits,
)

if TYPE_CHECKING:
    from flowstone.engine.requests import ParallelRequest, ScatterRequest
    from flowstone.engine.runner import StepRunner
    from flowstone.events import Event

__all__ = [
    "AuditLog",
    "BatchDispatch",
    "BatchFinish",
    "BatchLoading",
    "BulkClaim",
    "BulkRunCreation",
    "BulkRunReads",
    "ClaimedReads",
    "Closeable",
    "ContinuationReads",
    "DefaultIOManager",
    "DescribedStorage",
    "Executor",
    "Finish",
    "HealthCheck",
    "IOManager",
    "ItemReader",
    "ItemResults",
    "MaterializationLog",
    "Observer",
    "ParallelCoordinator",
    "PreferredCoordinators",
    "PrefetchDecoding",
    "ReferencedValues",
    "RouteDecisions",
    "RunScheduling",
    "RunStore",
    "ScatterCoordinator",
    "StagingStore",
    "StepNotes",
    "StorageKey",
    "StoreClock",
    "StoreLifecycle",
    "TicksAndCursors",
    "ValuePruning",
    "ValueStaging",
    "Waits",
    "WorkerPresence",
]


@dataclass(frozen=True, slots=True)
class StorageKey:
    """Where an IO manager should put one value: run- and attempt-scoped, so neither a
    re-run nor a losing duplicate attempt can overwrite the value an existing
    materialization record points to (the record names the exact location its attempt
    wrote).

    ``attempt`` is the step's attempt (0 for values stored outside a claimed step);
    ``item`` is set for per-item values (scatter item results); ``metadata`` is the
    asset's own ``@asset(metadata=...)`` (e.g. a ``format`` an IO manager honours).
    """

    pipeline: str
    asset: str
    partition: str
    run_id: str
    item: int | None = None
    attempt: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@runtime_checkable
class IOManager(Protocol):
    """Stores and loads asset values.

    ``store`` must be atomic: on any error (including :class:`~flowstone.errors.EncodingError`
    for a value the codec cannot represent, which must name ``key.asset`` and the offending
    type) nothing is left behind. Locations built from names and partitions must never
    escape the manager's root/prefix (:class:`~flowstone.errors.UnsafeKeyError`).
    """

    name: str

    def store(self, key: StorageKey, value: object) -> str:
        """Persist ``value`` and return an opaque location string for :meth:`load`."""
        ...

    def load(self, location: str) -> object:
        """Return the value at ``location``; raise ``ValueNotFoundError`` if absent."""
        ...

    def exists(self, location: str) -> bool: ...

    def delete(self, location: str) -> None:
        """Remove the value; deleting a missing value is not an error."""
        ...


@runtime_checkable
class ItemReader(Protocol):
    """Streams scatter items page by page with resumable checkpoints.

    Lifecycle: ``init(deps)`` once, then ``restore(checkpoint)`` optionally, then ``read``
    until it returns an empty list, calling ``checkpoint()`` after each page; ``close()``
    always. ``checkpoint()`` returns a JSON-able dict that, passed to ``restore`` on a fresh
    reader after ``init``, continues right after the last page returned.
    """

    def init(self, deps: Mapping[str, Any]) -> None: ...

    def read(self, max_items: int) -> list[Any]: ...

    def count(self) -> int | None:
        """Total number of items if cheaply known, else None."""
        ...

    def checkpoint(self) -> dict[str, Any]: ...

    def restore(self, checkpoint: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Observer(Protocol):
    """Receives every :class:`flowstone.events.Event`. Must not raise; if it does, the
    error is logged and counted and the run goes on (unless the pipeline is strict).

    An observer may have an ``event_kinds`` attribute (a set of :data:`~flowstone.events.EventKind`
    names): then only events of those kinds are built for it; without one it gets every
    event. Events another observer asked for may still reach it, so ``on_event`` must
    ignore kinds it does not handle.
    """

    def on_event(self, event: Event) -> None: ...


@runtime_checkable
class Executor(Protocol):
    """Runs the ready steps of a run.

    ``blocking`` executors (in-process) return from :meth:`dispatch` once nothing more of the
    run can progress in this process; non-blocking ones (Celery) return once the steps are
    enqueued, and the store tells callers when the run settles.
    """

    name: str
    blocking: bool

    def dispatch(self, runner: StepRunner, run_id: str, steps: Sequence[StepRecord]) -> None:
        """Run (blocking) or enqueue (non-blocking) ``steps`` of ``run_id``; ``runner``
        runs a step and knows the pipeline's runtime (``runner.runtime``)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ScatterCoordinator(Protocol):
    """Runs a scatter asset's items and gathers their results.

    ``execute`` returns the gathered value, or a :class:`flowstone.scatter.Deferred` when
    the items continue elsewhere: the step then waits (no worker held) until the
    coordinator finishes it with :func:`flowstone.engine.resume.complete_deferred`.
    """

    name: str

    def execute(self, request: ScatterRequest) -> object: ...


@runtime_checkable
class ParallelCoordinator(Protocol):
    """Collects the branch outcomes of a parallel asset and claims its join exactly once."""

    name: str

    def branch_results(self, request: ParallelRequest) -> dict[str, object]: ...


# --- optional capabilities ---------------------------------------------------------------
# Each is a small protocol a plugin MAY implement on top of its base protocol. The pipeline
# checks them once, when it is built (``flowstone.runtime.Capabilities``); the engine never
# looks for a method by name. A plugin without them works everywhere, just with more round
# trips.


@runtime_checkable
class BatchLoading(Protocol):
    """IO manager: load several values in one round trip.

    Buys: a step with several inputs (a join, an all-partitions or time-window mapping)
    loads them with one call per IO manager instead of one per input. Must agree with
    ``load``: same values, in the order asked, and ``ValueNotFoundError`` naming the
    missing location.
    """

    def load_many(self, locations: Sequence[str]) -> list[object]: ...


@runtime_checkable
class DescribedStorage(Protocol):
    """IO manager: store a value and say what it wrote (size, format, checksum...).

    Buys: those facts in the materialization's metadata (under ``"value"``) with no
    second round trip to ask for them. Otherwise exactly ``store``.
    """

    def store_described(self, key: StorageKey, value: object) -> tuple[str, Mapping[str, Any]]:
        """``(location, JSON-able facts about the stored value)``."""
        ...


@runtime_checkable
class ValueStaging(Protocol):
    """IO manager: encode a value without writing it, for a run store that writes it in
    the step's own ``finish_step`` transaction.

    Buys: value and record commit together, in one round trip instead of two. Used only
    when the pipeline's store is a :class:`StagingStore` that accepts
    ``staging_target`` (for example a Postgres store and a Postgres IO manager on the
    same database); otherwise the engine calls ``store`` as usual.
    """

    @property
    def staging_target(self) -> str:
        """What the store must be able to write to (e.g. a database identity)."""
        ...

    def stage(self, key: StorageKey, value: object) -> StagedValue:
        """Encode ``value`` (raising ``EncodingError`` as ``store`` would); write nothing."""
        ...


@runtime_checkable
class ValuePruning(Protocol):
    """An IO manager that can list the values it keeps.

    Buys: values no record points at are deleted by ``Pipeline.prune()`` (the daemon's and
    the Celery sweeper's housekeeping) once older than ``value_retention``: a fenced-out
    attempt's value, or one whose runner died between the value write and the finish.
    """

    def stored_before(
        self, cutoff: datetime, *, pipeline: str, since: datetime | None = None
    ) -> Iterator[str]:
        """Locations of ``pipeline``'s values written before ``cutoff`` (and at or after
        ``since``: each pruning pass looks only at what crossed the retention since the
        last one)."""
        ...


@runtime_checkable
class ReferencedValues(Protocol):
    """A run store that says which value locations its records point at (materializations
    and approvals); needed by orphan-value pruning (:class:`ValuePruning`)."""

    def referenced_locations(self, io_manager: str, locations: Sequence[str]) -> set[str]:
        """Those of ``locations`` (of IO manager ``io_manager``) some record points at."""
        ...


@runtime_checkable
class PrefetchDecoding(Protocol):
    """IO manager: decode values a run store read for a continuation.

    Buys: a step claimed by its predecessor's ``finish_step`` (a continuation) reads no
    input the store already sent along. ``prefetch_source`` names where the store may
    read them (None: not yet known); ``decode_prefetched`` turns what it read (or what
    ``stage`` put in :attr:`StagedValue.encoded`) into the value, exactly as ``load``.
    """

    @property
    def prefetch_source(self) -> str | None: ...

    def decode_prefetched(self, location: str, encoded: object) -> object: ...


@runtime_checkable
class StagingStore(Protocol):
    """Run store: writes :class:`~flowstone.records.StagedValue` s inside ``finish_step``.

    Buys: one transaction per step for value and record (see :class:`ValueStaging`).
    The store reads :attr:`StagedValue.payload`, a private type of the IO manager plugin
    it shares a database with; it must refuse a target it does not accept.
    """

    def accepts_staging(self, target: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class ClaimedReads:
    """What a :class:`ContinuationReads` store read for the continuation it claimed, in
    the same transaction: its dependency steps with their records (as
    ``get_step_results`` returns them) and the encoded input values it could read from
    the given prefetch sources, by location."""

    inputs: tuple[tuple[StepRecord, MaterializationRecord | None], ...] = ()
    values: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class ContinuationReads(Protocol):
    """Run store: ``finish_step`` that also returns what the claimed continuation reads.

    Buys: a chain of steps on one worker costs one statement per step (finish, claim the
    next, read its inputs), not three. ``sources`` maps IO manager names to their
    :attr:`PrefetchDecoding.prefetch_source`; the store reads values only from sources
    it understands. Otherwise exactly ``finish_step``.
    """

    def finish_step_reading(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        *,
        then: Continuation,
        sources: Mapping[str, str],
        fence: Fence | None = None,
    ) -> tuple[StepTransition, ClaimedReads | None]: ...


@dataclass(frozen=True, slots=True)
class Finish:
    """One finish of a :class:`BatchFinish` batch: the arguments of ``finish_step`` (and,
    with ``then``, of ``finish_step_reading``)."""

    run_id: str
    asset: str
    partition: str
    outcome: StepOutcome
    then: Continuation | None = None
    fence: Fence | None = None


@runtime_checkable
class BatchFinish(Protocol):
    """Run store: several steps' ``finish_step`` in one transaction.

    Buys: a worker that ran several steps one after the other (a Celery pack) commits their
    finishes together, one commit and one status update per run instead of one each.
    Each finish is exactly ``finish_step`` (``finish_step_reading`` with ``sources`` when
    it has ``then``): fenced, applied at most once, its staged values written with it;
    the results come back in the order of ``finishes``. They commit together or not at
    all (an infrastructure error raises and records none of them). A finish the store
    refuses with an error (no such step, a step still pending) comes back as that error,
    and the others are recorded.
    """

    def finish_steps(
        self, finishes: Sequence[Finish], *, sources: Mapping[str, str]
    ) -> list[tuple[StepTransition, ClaimedReads | None] | Exception]: ...


@runtime_checkable
class BulkClaim(Protocol):
    """Run store: several steps claimed in one round trip.

    Buys: a worker that takes a message of several steps (a pack, or ``run_many``'s steps
    of many runs) claims them together instead of one round trip each. Each claim is
    exactly ``claim_step(run_id, asset, partition, owner=owner,
    lease_seconds=lease_seconds, pipeline=pipeline)``: the same conditions, a new attempt
    and lease each, the same facts (``queued_s``, ``took_over``); the results come back in
    the order of ``keys``, ``None`` where ``claim_step`` would have returned ``None``.
    The claims need not commit together (a lost claim is harmless: see ``claim_step``).
    """

    def claim_steps(
        self,
        keys: Sequence[tuple[str, str, str]],
        *,
        owner: str,
        lease_seconds: float,
        pipeline: str | None = None,
    ) -> list[StepRecord | None]: ...


@runtime_checkable
class BulkRunCreation(Protocol):
    """Run store: many runs created in one transaction.

    Buys: ``Pipeline.run_many`` creates a chunk of runs with one commit instead of one
    each. Each ``(run, steps)`` is exactly ``create_run(run, steps)``; the ready steps of
    each come back in the order given. All of them are created, or (an error raised)
    none.
    """

    def create_runs(
        self, runs: Sequence[tuple[RunRecord, Sequence[StepSpec]]]
    ) -> list[tuple[StepRecord, ...]]: ...


@runtime_checkable
class BulkRunReads(Protocol):
    """Run store: several runs in one read.

    Buys: ``Pipeline.wait`` over a thousand runs polls with one statement per 16 runs
    instead of one per run. Unknown ids are left out; any order.
    """

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]: ...


@runtime_checkable
class StoreClock(Protocol):
    """Run store: the store's own clock, aware UTC.

    Buys: a time the engine compares with a stored time (a parallel branch's start) is
    read where the state lives, so every worker sharing the store agrees on it: the
    database's ``now()`` for Postgres, the store's one ``clock`` for SQLite and memory.
    Without it the engine reads this process's clock.
    """

    def clock(self) -> datetime: ...


@runtime_checkable
class BatchDispatch(Protocol):
    """Executor: hand over the ready steps of many runs at once.

    Buys: ``Pipeline.run_many`` packs steps of different runs into fewer messages.
    """

    def dispatch_many(
        self, runner: StepRunner, batches: Sequence[tuple[str, Sequence[StepRecord]]]
    ) -> None: ...


@runtime_checkable
class HealthCheck(Protocol):
    """Executor (or any plugin object): report its own health for ``Pipeline.health``.

    Returns ``"ok"``, an error text, or a mapping with an ``"ok"`` boolean and details
    (e.g. broker reachable, workers answering).
    """

    def health(self) -> str | Mapping[str, Any]: ...


@runtime_checkable
class WorkerPresence(Protocol):
    """Non-blocking executor: how many live workers serve a pipeline right now.

    ``flowstone run`` asks when a run has not settled after a few seconds, so a user
    whose steps sit in a queue nobody consumes is told to start a worker instead of
    waiting silently. ``serving`` answers within about a second: the number of workers
    that said they serve ``pipeline`` (0: none does), or None when the executor cannot
    tell (e.g. the broker is unreachable, or workers answer but not which pipelines).
    """

    def serving(self, pipeline: str) -> int | None: ...


@runtime_checkable
class PreferredCoordinators(Protocol):
    """Executor: the scatter and parallel coordinator plugins it works best with (used
    when the pipeline names none and that plugin is installed), e.g. Celery's durable
    ones."""

    @property
    def scatter_coordinator(self) -> str: ...

    @property
    def parallel_coordinator(self) -> str: ...


@runtime_checkable
class Closeable(Protocol):
    """IO manager or coordinator: holds something to release (connections, pools,
    threads). ``Pipeline.close`` calls ``close`` on each that has it, once."""

    def close(self) -> None: ...
