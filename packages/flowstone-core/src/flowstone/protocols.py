"""The plugin contract: every protocol a FlowStone plugin can implement.

Core ships in-process implementations of each (under :mod:`flowstone.defaults`); plugins
implement them on real services and register through entry points (see
:mod:`flowstone.registry`). The contract test suites in :mod:`flowstone.testing` pin the
behaviour every implementation must have.

Conventions shared by all protocols:

* partitions are *encoded* strings (:func:`flowstone.partitions.encode_partition`);
  ``""`` means "not partitioned";
* datetimes are timezone-aware UTC;
* every write is idempotent: repeating a call with the same arguments never records twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from flowstone.records import (
    Approval,
    AuditEntry,
    Continuation,
    Gate,
    ItemResult,
    MaterializationRecord,
    RunRecord,
    RunStatus,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)

if TYPE_CHECKING:
    from flowstone.events import Event

__all__ = [
    "Executor",
    "IOManager",
    "ItemReader",
    "Observer",
    "ParallelCoordinator",
    "RunStore",
    "ScatterCoordinator",
    "StorageKey",
]


@dataclass(frozen=True, slots=True)
class StorageKey:
    """Where an IO manager should put one value: run-scoped, so a re-run never overwrites
    the value an existing materialization record points to.

    ``item`` is set for per-item values (scatter item results).
    """

    pipeline: str
    asset: str
    partition: str
    run_id: str
    item: int | None = None


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
    error is logged and counted and the run goes on (unless the pipeline is strict)."""

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

    def dispatch(self, pipeline: Any, run_id: str, steps: Sequence[StepRecord]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ScatterCoordinator(Protocol):
    """Runs a scatter asset's items and gathers their results.

    ``execute`` returns the gathered value, or a :class:`flowstone.scatter.Deferred` when
    the items continue elsewhere: the step then waits (no worker held) until the
    coordinator finishes it with :func:`flowstone.engine.resume.complete_deferred`.
    """

    name: str

    def execute(self, request: Any) -> object: ...


@runtime_checkable
class ParallelCoordinator(Protocol):
    """Collects the branch outcomes of a parallel asset and claims its join exactly once."""

    name: str

    def branch_results(self, request: Any) -> dict[str, object]: ...


@runtime_checkable
class RunStore(Protocol):
    """Durable state of runs: the source of truth every executor schedules from.

    Steps form each run's plan. ``finish_step`` is the one scheduling primitive: in one
    transaction it records the materialization (and lineage, approval or gate), moves the
    step to its new state, decrements its dependents' ``remaining_deps`` and returns those
    that reached zero, each to exactly one caller. A redelivered completion (step already
    terminal) changes nothing.

    Optional methods, which callers look up with ``getattr`` and do without when absent:

    * ``get_runs(run_ids: Sequence[str]) -> list[RunRecord]``: several runs in one read,
      unknown ids left out, any order (``Pipeline.wait`` polls with it);
    * ``accepts_staging(target: str) -> bool``: whether ``finish_step`` writes an IO
      manager's :class:`~flowstone.records.StagedValue` in its own transaction.
    """

    name: str

    # --- lifecycle -----------------------------------------------------------------
    def ping(self) -> None:
        """Raise ``StorageError`` if the store is unreachable."""
        ...

    def close(self) -> None: ...

    # --- runs ------------------------------------------------------------------------
    def create_run(self, run: RunRecord, steps: Sequence[StepSpec]) -> tuple[StepRecord, ...]:
        """Create the run and its plan in one transaction; return the steps that are ready.

        A dep on a step created ``succeeded`` (reused) counts as satisfied. If no step is
        runnable the run is written ``succeeded`` at once. Duplicate run ids raise
        ``StorageError``.
        """
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def list_runs(
        self, *, pipeline: str | None = None, status: RunStatus | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Newest first."""
        ...

    def set_run_status(
        self, run_id: str, status: RunStatus, *, error: str | None = None
    ) -> None: ...

    def cancel_run(self, run_id: str) -> bool:
        """Mark the run cancelled and every non-terminal step ``cancelled``; False if the run
        was already terminal."""
        ...

    def reopen_run(self, run_id: str) -> tuple[StepRecord, ...]:
        """Put a failed/cancelled run's failed, upstream_failed and cancelled steps back to
        pending (recomputing ``remaining_deps``), set the run running, return ready steps."""
        ...

    # --- steps -----------------------------------------------------------------------
    def get_step(self, run_id: str, asset: str, partition: str) -> StepRecord | None: ...

    def get_step_results(
        self, run_id: str, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[StepRecord, MaterializationRecord | None]]:
        """The steps of ``run_id`` at these ``(asset, partition)`` keys, each with the
        materialization record it points at (None if none), in one read: how a step reads
        its dependencies. Keys without a step are left out; any order."""
        ...

    def list_steps(self, run_id: str) -> list[StepRecord]: ...

    def claim_step(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> StepRecord | None:
        """ready -> running (attempt + 1), also running-with-expired-lease -> running.

        Returns None if the step is not claimable now (pending, already running under a
        live lease, waiting, terminal, ``not_before`` in the future, or the run cancelled).
        """
        ...

    def renew_lease(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> bool: ...

    def retry_step(
        self, run_id: str, asset: str, partition: str, *, not_before: datetime, error: str
    ) -> bool:
        """running -> ready, runnable again from ``not_before``. False if not running."""
        ...

    def finish_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        *,
        then: Continuation | None = None,
    ) -> StepTransition:
        """Record a step's outcome and schedule its dependents (see class docstring).

        With ``then``, the first dependent that became ready (by asset, then partition)
        is claimed for ``then.owner`` in the same transaction and returned as
        ``StepTransition.claimed`` instead of in ``ready`` (not in a cancelled run).

        Accepted from ``running``, ``ready`` and ``waiting``. For ``waiting`` the approval /
        gate in the outcome is created and the step waits (dependents untouched); an
        approval gets its id assigned by the store. The run's status is recomputed: some
        step ready/running -> ``running``; else some waiting -> ``waiting``; else
        ``failed`` if any step failed/upstream_failed, ``cancelled`` if cancelled, else
        ``succeeded``.
        """
        ...

    def stale_steps(self, now: datetime, *, ready_for_seconds: float) -> list[StepRecord]:
        """Steps a sweeper should re-dispatch: ``ready`` for longer than
        ``ready_for_seconds`` (and past ``not_before``), or ``running`` with an expired
        lease, in runs that are running."""
        ...

    # --- materializations & lineage ----------------------------------------------------
    def get_materialization(self, materialization_id: str) -> MaterializationRecord | None: ...

    def find_materialization(
        self, pipeline: str, asset: str, partition: str, *, run_id: str | None = None
    ) -> MaterializationRecord | None:
        """With ``run_id``: that run's record in any state. Without: the newest succeeded,
        not invalidated record."""
        ...

    def list_materializations(
        self,
        pipeline: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[MaterializationRecord]:
        """Newest first."""
        ...

    def invalidate(self, pipeline: str, asset: str, partition: str | None = None) -> int:
        """Mark succeeded records invalidated (all partitions when ``partition`` is None);
        return how many."""
        ...

    def upstream(self, materialization_id: str) -> list[MaterializationRecord]: ...

    def downstream(self, materialization_id: str) -> list[MaterializationRecord]: ...

    # --- approvals & gates -------------------------------------------------------------
    def get_approval(self, approval_id: int) -> Approval | None: ...

    def find_approval(self, run_id: str, asset: str, partition: str) -> Approval | None: ...

    def list_approvals(
        self, *, pipeline: str | None = None, status: str | None = None
    ) -> list[Approval]: ...

    def decide_approval(
        self,
        approval_id: int,
        status: Literal["approved", "rejected", "expired"],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> Approval:
        """pending -> status exactly once; raise ``ApprovalError`` if not pending/unknown."""
        ...

    def due_approvals(self, now: datetime) -> list[Approval]:
        """Pending approvals whose ``expires_at`` is at or before ``now``."""
        ...

    def get_gate(self, token_hash: str) -> Gate | None: ...

    def consume_gate(
        self, token_hash: str, *, payload: Any, status: Literal["signaled", "expired"]
    ) -> Gate:
        """pending -> status exactly once; raise ``SignalError`` if unknown or used."""
        ...

    def due_gates(self, now: datetime) -> list[Gate]: ...

    # --- routing -----------------------------------------------------------------------
    def record_route_decision(self, run_id: str, router: str, partition: str, branch: str) -> str:
        """First write wins; returns the persisted branch."""
        ...

    def get_route_decision(self, run_id: str, router: str, partition: str) -> str | None: ...

    def prune_route_decisions(self, older_than: datetime) -> int: ...

    # --- cursors & ticks ---------------------------------------------------------------
    def get_cursor(self, name: str) -> str | None: ...

    def set_cursor(self, name: str, value: str, *, expected: str | None = None) -> bool:
        """Compare-and-set: write only if the current value equals ``expected`` (None =
        absent). Returns whether it was written."""
        ...

    def claim_tick(self, name: str, tick: str) -> bool:
        """Insert-if-absent: True for exactly one caller per (name, tick)."""
        ...

    # --- audit -------------------------------------------------------------------------
    def append_audit(
        self,
        run_id: str,
        kind: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None: ...

    def list_audit(self, run_id: str) -> list[AuditEntry]: ...

    # --- scatter item results ------------------------------------------------------------
    def save_item_results(
        self, run_id: str, asset: str, partition: str, results: Sequence[ItemResult]
    ) -> None:
        """Upsert by item index."""
        ...

    def load_item_results(self, run_id: str, asset: str, partition: str) -> list[ItemResult]:
        """Ordered by index."""
        ...
