"""The :class:`RunStore` protocol, as the union of the roles it plays.

A run store is the durable state of runs, the source of truth every executor schedules
from. It plays several roles, each a small protocol, so a component can say which part it
uses (the daemon needs only :class:`TicksAndCursors`, lineage only
:class:`MaterializationLog`) and a reader can learn one role at a time:

* :class:`StoreLifecycle`: its name, ``ping`` and ``close``;
* :class:`RunScheduling`: runs and their steps, claims, leases and ``finish_step``;
* :class:`MaterializationLog`: what produced each value, lineage, invalidation;
* :class:`Waits`: approvals and signal gates;
* :class:`RouteDecisions`: a router's persisted choice;
* :class:`TicksAndCursors`: schedule ticks and sensor cursors;
* :class:`AuditLog`: the run's audit trail;
* :class:`ItemResults`: scatter item results;
* :class:`StepNotes`: small write-once facts about a step (a parallel's branch clock,
  a failed join's record);
* :class:`DefaultIOManager`: where values go when a pipeline names no IO manager.

The rules every store applies are in :mod:`flowstone.store_rules`; the contract suite in
:mod:`flowstone.testing.store_contract` pins them. All protocols are re-exported by
:mod:`flowstone.protocols`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from flowstone.records import (
    Approval,
    AuditEntry,
    Continuation,
    Fence,
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
from flowstone.store_rules import RESEND_BATCH, RunKey

if TYPE_CHECKING:
    from flowstone.protocols import IOManager

__all__ = [
    "AuditLog",
    "DefaultIOManager",
    "ItemResults",
    "MaterializationLog",
    "RouteDecisions",
    "RunScheduling",
    "RunStore",
    "StepNotes",
    "StoreLifecycle",
    "TicksAndCursors",
    "Waits",
]


@runtime_checkable
class StoreLifecycle(Protocol):
    """A store's name (shown in messages), its reachability check and its release."""

    name: str

    def ping(self) -> None:
        """Raise ``StorageError`` if the store is unreachable."""
        ...

    def close(self) -> None:
        """Release connections; a later call may reopen them."""
        ...


@runtime_checkable
class DefaultIOManager(Protocol):
    """Where asset values go when a pipeline names no ``"default"`` IO manager.

    A store knows the natural home of values beside its own records: the memory store
    keeps them in memory, the SQLite store in a ``<name>.values.db`` file beside its own,
    the Postgres store in its schema's ``asset_values`` table. Each call returns a new IO
    manager, owned (and closed) by the pipeline that asked.
    """

    def default_io_manager(self) -> IOManager: ...


@runtime_checkable
class RunScheduling(Protocol):
    """Runs and their steps: the plan, claims under leases, and ``finish_step``.

    ``finish_step`` is the one scheduling primitive: in one transaction it records the
    materialization (and lineage, approval or gate), moves the step to its new state,
    decrements its dependents' ``remaining_deps`` and returns those that reached zero,
    each to exactly one caller. A redelivered completion (step already terminal) changes
    nothing. The state rules are :mod:`flowstone.store_rules`.
    """

    def create_run(self, run: RunRecord, steps: Sequence[StepSpec]) -> tuple[StepRecord, ...]:
        """Create the run and its plan in one transaction; return the steps that are ready.

        A dep on a step created ``succeeded`` (reused) counts as satisfied. If no step is
        runnable the run is written ``succeeded`` at once. Duplicate run ids raise
        ``StorageError``; an invalid plan raises ``UsageError`` (see
        :func:`~flowstone.store_rules.plan_steps`).
        """
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        after: RunKey | None = None,
    ) -> list[RunRecord]:
        """At most ``limit`` runs, newest first: by ``created_at``, then ``run_id``.

        Pages: ``after`` is the ``(created_at, run_id)``
        (:func:`~flowstone.store_rules.run_key`) of the last run of the previous page, and
        the page holds the runs after it in that order. A run that leaves the filter
        meanwhile (its status changed) does not shift the later pages, so a caller that
        acts on the runs it pages through (the engine's sweeps) skips none. ``offset``
        skips that many runs instead (not with ``after``); it is for pages a person asks
        for, and shifts when runs come or go. See
        :func:`~flowstone.store_rules.check_run_keyset` for the validation.
        """
        ...

    def set_run_status(
        self, run_id: str, status: RunStatus, *, error: str | None = None
    ) -> None: ...

    def cancel_run(self, run_id: str) -> bool:
        """Mark the run cancelled and every non-terminal step ``cancelled``; False if the run
        was already terminal. Appends ``run_cancelled`` to the audit log."""
        ...

    def reopen_run(self, run_id: str) -> tuple[StepRecord, ...]:
        """Put a failed/cancelled run's failed, upstream_failed and cancelled steps back to
        pending (recomputing ``remaining_deps``), set the run running, return ready steps.
        Appends ``run_reopened`` to the audit log."""
        ...

    def get_step(self, run_id: str, asset: str, partition: str) -> StepRecord | None: ...

    def get_step_results(
        self, run_id: str, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[StepRecord, MaterializationRecord | None]]:
        """The steps of ``run_id`` at these ``(asset, partition)`` keys, each with the
        materialization record it points at (None if none), in one read: how a step reads
        its dependencies. Keys without a step are left out; any order."""
        ...

    def list_steps(self, run_id: str) -> list[StepRecord]:
        """In plan order."""
        ...

    def claim_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        owner: str,
        lease_seconds: float,
        pipeline: str | None = None,
    ) -> StepRecord | None:
        """ready -> running (attempt + 1), also running-with-expired-lease -> running.

        Every comparison (``not_before``, the lease's expiry) and the new lease
        (``lease_seconds`` from now) use the store's clock -- the database's ``now()`` for
        a shared store -- never the caller's, so a worker whose clock is off cannot take
        over a live lease. The returned record also reports, computed in the claim itself
        (:func:`~flowstone.store_rules.claim_facts`), how long the step had waited
        (``queued_s``) and whether this claim took over another owner's expired lease
        (``took_over``).

        The returned step's ``owner`` and ``attempt`` are the claim's fencing token
        (:class:`~flowstone.records.Fence`): ``renew_lease`` and ``finish_step`` given it
        apply only while the step is still running under this claim.

        Returns None if the step is not claimable now (pending, already running under a
        live lease, waiting, terminal, ``not_before`` in the future, or the run cancelled),
        or if ``pipeline`` is given and the run belongs to another pipeline (checked in
        the same statement; :func:`~flowstone.store_rules.claimable_by`).
        """
        ...

    def renew_lease(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        owner: str,
        lease_seconds: float,
        attempt: int | None = None,
    ) -> bool:
        """Extend a running step's lease to ``lease_seconds`` from now (the store's
        clock); False (nothing changed) unless it is running
        for ``owner`` (and, when given, at ``attempt``): a runner that gets False has
        lost its claim and cannot commit."""
        ...

    def retry_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        delay_seconds: float,
        error: str,
        fence: Fence | None = None,
    ) -> StepRecord | None:
        """running -> ready, runnable again ``delay_seconds`` from now by the store's clock
        (the database's ``now()`` for a shared store; the step's ``not_before``). Returns
        the step as it now is, or None if it was not running (or, with ``fence``, not
        running under that claim: a stale runner cannot send back a step another runner
        holds). Appends ``step_retry`` to the audit log."""
        ...

    def finish_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        *,
        then: Continuation | None = None,
        fence: Fence | None = None,
    ) -> StepTransition:
        """Record a step's outcome and schedule its dependents (see the class docstring).

        With ``fence`` (the claim of the runner finishing), the finish applies only
        while the step is ``running`` under that owner and attempt
        (:func:`~flowstone.store_rules.fence_holds`); otherwise nothing is written and
        ``applied`` is False: a stale runner's value stays an orphan. Without it (resume
        paths finishing a waiting step) the state alone decides.

        With ``then``, the first dependent that became ready (by asset, then partition)
        is claimed for ``then.owner`` in the same transaction and returned as
        ``StepTransition.claimed`` instead of in ``ready`` (not in a cancelled run).

        Accepted from ``running``, ``ready`` and ``waiting``. For ``waiting`` the approval /
        gate in the outcome is created and the step waits (dependents untouched); an
        approval gets its id assigned by the store; an approval or gate with any other
        state is a ``UsageError``. The run's status is recomputed
        (:func:`~flowstone.store_rules.run_status_from`) and reported in
        ``StepTransition.run_status`` when it changed.
        """
        ...

    def resend_steps(
        self,
        *,
        ready_for_seconds: float,
        pipeline: str | None = None,
        limit: int = RESEND_BATCH,
    ) -> list[StepRecord]:
        """The steps a sweeper should send again now, each stamped as re-sent by this
        call (in the same statement): ``ready`` for at least ``ready_for_seconds`` (since
        it became ready, or since ``not_before``) or ``running`` under an expired lease,
        in running runs (of ``pipeline``, when given), by the store's clock. A step
        already re-sent is due again only after
        :func:`~flowstone.store_rules.resend_backoff_seconds` (the interval doubled per
        re-send; a claim resets it), so a backlog no worker takes yet is not re-published
        every sweep. At most ``limit`` steps, those never re-sent first, then the oldest
        (:func:`~flowstone.store_rules.resend_due`)."""
        ...

    def stale_steps(self, now: datetime, *, ready_for_seconds: float) -> list[StepRecord]:
        """A read-only report of the backlog at ``now``: steps ``ready`` for longer than
        ``ready_for_seconds`` (and past ``not_before``), or ``running`` with an expired
        lease, in runs that are running. Nothing is stamped; sweepers use
        :meth:`resend_steps`."""
        ...


@runtime_checkable
class MaterializationLog(Protocol):
    """What produced each asset value (one record per run, asset and partition, written by
    ``finish_step``), the lineage between records, and invalidation."""

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

    def upstream(self, materialization_id: str) -> list[MaterializationRecord]:
        """The records this one was computed from, in its ``upstream`` order."""
        ...

    def downstream(self, materialization_id: str) -> list[MaterializationRecord]:
        """The records computed from this one, oldest first."""
        ...


@runtime_checkable
class Waits(Protocol):
    """Approvals and signal gates: the waits ``finish_step`` creates for a ``waiting``
    step, each decided or consumed exactly once."""

    def get_approval(self, approval_id: int) -> Approval | None: ...

    def find_approval(self, run_id: str, asset: str, partition: str) -> Approval | None:
        """The step's newest approval."""
        ...

    def list_approvals(
        self, *, pipeline: str | None = None, status: str | None = None
    ) -> list[Approval]:
        """Oldest first."""
        ...

    def decide_approval(
        self,
        approval_id: int,
        status: Literal["approved", "rejected", "expired"],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> Approval:
        """pending -> status exactly once; raise ``ApprovalError`` if not pending/unknown,
        or (approved/rejected) if its ``expires_at`` has passed by the store's clock (a
        late decision; the approval stays pending for the sweeper to expire). Appends
        ``approval_<status>`` to the audit log."""
        ...

    def due_approvals(self, now: datetime | None = None) -> list[Approval]:
        """Pending approvals whose ``expires_at`` is at or before ``now`` (None: the
        store's own clock, the database's for a shared store)."""
        ...

    def get_gate(self, token_hash: str) -> Gate | None: ...

    def find_gate(self, run_id: str, asset: str, partition: str) -> Gate | None:
        """The step's newest gate (signal gate or deferred completion)."""
        ...

    def consume_gate(
        self,
        token_hash: str,
        *,
        payload: Any,
        status: Literal["signaled", "expired"],
        claim: Continuation | None = None,
    ) -> Gate:
        """pending -> status exactly once; raise ``SignalError`` if unknown or used, or
        (``signaled``) if its ``expires_at`` has passed by the store's clock (the gate
        stays pending), and ``StorageError`` (gate left pending) if ``payload`` is not
        JSON-able. Appends ``gate_<status>`` to the audit log.

        With ``claim``, the gate's ``waiting`` step is claimed for resolving it in the same
        transaction: its attempt goes up by one and it is held by ``claim.owner`` for
        ``claim.lease_seconds`` (it stays ``waiting``). The resolver stores its value at
        that attempt's location and finishes with that fence; if it dies,
        :meth:`take_over_wait` lets another process finish the step from the payload
        recorded here. A gate whose step is not ``waiting`` is not consumed."""
        ...

    def take_over_wait(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> StepRecord | None:
        """Claim a ``waiting`` step whose wait was resolved (a consumed gate) but not
        finished, because its resolver's claim lapsed (lease expired by the store's clock)
        or because ``owner`` is that resolver retrying: attempt + 1, held by ``owner``.
        None if the step is not waiting under such a claim."""
        ...

    def due_gates(self, now: datetime | None = None) -> list[Gate]:
        """Pending gates whose ``expires_at`` is at or before ``now`` (None: the store's
        own clock)."""
        ...


@runtime_checkable
class RouteDecisions(Protocol):
    """A router's choice, persisted once per (run, router, partition) and replayed."""

    def record_route_decision(self, run_id: str, router: str, partition: str, branch: str) -> str:
        """First write wins; returns the persisted branch."""
        ...

    def get_route_decision(self, run_id: str, router: str, partition: str) -> str | None: ...

    def prune_route_decisions(self, older_than: datetime) -> int:
        """Delete decisions made before ``older_than``; return how many."""
        ...


@runtime_checkable
class TicksAndCursors(Protocol):
    """What the daemon keeps: each schedule's and sensor's cursor, and the ticks (and
    sensor run keys) already fired, so two daemons never fire one twice."""

    def get_cursor(self, name: str) -> str | None: ...

    def set_cursor(self, name: str, value: str, *, expected: str | None = None) -> bool:
        """Compare-and-set: write only if the current value equals ``expected`` (None =
        absent). Returns whether it was written."""
        ...

    def claim_tick(self, name: str, tick: str) -> bool:
        """Insert-if-absent: True for exactly one caller per (name, tick)."""
        ...

    def prune_ticks(self, older_than: datetime, *, prefix: str) -> int:
        """Delete ticks whose name starts with ``prefix`` claimed before ``older_than``
        (schedule ticks behind their cursor, old sweeper intervals); return how many."""
        ...


@runtime_checkable
class AuditLog(Protocol):
    """The run's audit trail: every transition the store made, plus entries the engine
    and plugins append (``detail`` must be JSON-able, else ``StorageError``)."""

    def append_audit(
        self,
        run_id: str,
        kind: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None: ...

    def list_audit(self, run_id: str) -> list[AuditEntry]:
        """Oldest first."""
        ...


@runtime_checkable
class ItemResults(Protocol):
    """The per-item results of a scatter step, saved as items finish and gathered once."""

    def save_item_results(
        self, run_id: str, asset: str, partition: str, results: Sequence[ItemResult]
    ) -> None:
        """Upsert by item index."""
        ...

    def load_item_results(self, run_id: str, asset: str, partition: str) -> list[ItemResult]:
        """Ordered by index."""
        ...


@runtime_checkable
class StepNotes(Protocol):
    """Small facts about one step of a run, each written once: the named home of what
    would otherwise be smuggled into cursors.

    A note is a string under a ``kind`` (e.g. ``"parallel.started"``) attached to one
    (run, asset, partition); the first write wins, and every write returns the value that
    stands, so racing workers agree on one. The engine keeps a timed parallel asset's
    branch clock here, flowstone-parallel the record of a join that failed.
    """

    def add_step_note(self, run_id: str, asset: str, partition: str, kind: str, value: str) -> str:
        """Insert-if-absent; return the note that stands (``value`` if this call wrote it)."""
        ...

    def get_step_note(self, run_id: str, asset: str, partition: str, kind: str) -> str | None: ...


@runtime_checkable
class RunStore(
    StoreLifecycle,
    RunScheduling,
    MaterializationLog,
    Waits,
    RouteDecisions,
    TicksAndCursors,
    AuditLog,
    ItemResults,
    StepNotes,
    DefaultIOManager,
    Protocol,
):
    """Durable state of runs: every role above, in one store.

    A store may add optional capabilities (:class:`~flowstone.protocols.BulkRunReads`,
    :class:`~flowstone.protocols.StagingStore`,
    :class:`~flowstone.protocols.ContinuationReads`); the pipeline checks them once,
    when it is built.
    """
