"""Plain, frozen records that run stores persist and return.

Every field is a primitive, a ``datetime`` (always timezone-aware UTC), a tuple, or a
JSON-able mapping, so any store can persist them and any process can read them back.
Partitions are always in their *encoded* form here (see :mod:`flowstone.partitions`);
the empty string means "not partitioned".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "TERMINAL_STEP_STATES",
    "Approval",
    "ApprovalStatus",
    "AuditEntry",
    "Continuation",
    "Fence",
    "Gate",
    "GateStatus",
    "ItemResult",
    "MaterializationRecord",
    "MaterializationState",
    "RunRecord",
    "RunStatus",
    "StagedValue",
    "StepOutcome",
    "StepRecord",
    "StepSpec",
    "StepState",
    "StepTransition",
]

RunStatus = Literal["running", "waiting", "succeeded", "failed", "cancelled"]
MaterializationState = Literal["running", "waiting", "succeeded", "failed", "skipped"]
# pending: waiting for deps; ready: deps done, not yet handed to an executor;
# queued: handed to an executor (message sent); running: claimed by a worker;
# waiting: paused on an approval/gate/scatter; the rest are terminal.
StepState = Literal[
    "pending",
    "ready",
    "queued",
    "running",
    "waiting",
    "succeeded",
    "failed",
    "skipped",
    "upstream_failed",
    "cancelled",
]
TERMINAL_STEP_STATES: frozenset[str] = frozenset(
    {"succeeded", "failed", "skipped", "upstream_failed", "cancelled"}
)
ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "cancelled"]
GateStatus = Literal["pending", "signaled", "expired", "cancelled"]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a pipeline for a target selection and one partition."""

    run_id: str
    pipeline: str
    targets: tuple[str, ...]
    partition: str
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    error: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One node of a run's plan, as handed to :meth:`RunStore.create_run`.

    ``deps`` are the (asset, encoded partition) pairs this step waits for; ``state`` is
    ``"pending"`` normally, or ``"succeeded"`` for a step whose value is reused from an
    earlier materialization (``reused_materialization_id`` then names it).
    """

    asset: str
    partition: str
    deps: tuple[tuple[str, str], ...] = ()
    state: Literal["pending", "succeeded"] = "pending"
    reused_materialization_id: str | None = None


@dataclass(frozen=True, slots=True)
class StepRecord:
    """The live state of one step of a run."""

    run_id: str
    asset: str
    partition: str
    state: StepState
    remaining_deps: int
    attempt: int = 0
    owner: str | None = None
    lease_expires_at: datetime | None = None
    not_before: datetime | None = None
    materialization_id: str | None = None
    error: str | None = None
    updated_at: datetime | None = None
    # reported by the claim that returned this record (None/False on every other read),
    # computed by the store in the claim itself, with the store's (database's) clock:
    queued_s: float | None = None
    """Seconds the step had been ``ready`` (since it became ready, or since ``not_before``
    if later) when this claim took it; None for a take-over and on other reads."""
    took_over: bool = False
    """This claim took the step over from another owner whose lease had expired."""


@dataclass(frozen=True, slots=True)
class MaterializationRecord:
    """What produced one asset value: who, when, where it is stored, from what inputs."""

    id: str
    pipeline: str
    run_id: str
    asset: str
    partition: str
    state: MaterializationState
    io_manager: str | None = None
    location: str | None = None
    attempt: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    upstream: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    invalidated: bool = False


@dataclass(frozen=True, slots=True)
class Approval:
    """A human decision an asset is waiting for."""

    id: int
    pipeline: str
    run_id: str
    asset: str
    partition: str
    message: str
    status: ApprovalStatus
    created_at: datetime
    expires_at: datetime | None = None
    io_manager: str | None = None
    location: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Gate:
    """A signal gate: an external callback an asset is waiting for.

    Stores never keep the token itself, only ``token_hash`` (hex SHA-256).
    """

    token_hash: str
    pipeline: str
    run_id: str
    asset: str
    partition: str
    status: GateStatus
    created_at: datetime
    expires_at: datetime | None = None
    payload: Any = None
    signaled_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StagedValue:
    """A value its IO manager encoded but did not write: the run store writes it in the
    transaction that records the step (``finish_step``), so value and record commit
    together in one round trip (see :class:`~flowstone.protocols.ValueStaging` and
    :class:`~flowstone.protocols.StagingStore`).

    ``payload`` is the write itself, a private type of the IO manager's plugin that only a
    store accepting ``target`` understands. ``encoded`` is the value as the IO manager's
    ``decode_prefetched`` reads it back (None: it has none), for a continuation that reads
    this value.
    """

    location: str
    target: str
    payload: object
    encoded: object = None


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What happened when a step ran; handed to :meth:`RunStore.finish_step`.

    For ``state="waiting"`` exactly one of ``approval`` / ``gate`` is set and the store
    creates it in the same transaction. For ``succeeded``/``failed``/``skipped`` a
    ``materialization`` is recorded (with its lineage) in the same transaction, and so are
    ``staged`` values (only ever given to a store that accepts them, see
    :class:`StagedValue`).
    """

    state: Literal["succeeded", "failed", "skipped", "waiting", "upstream_failed", "cancelled"]
    materialization: MaterializationRecord | None = None
    error: str | None = None
    approval: Approval | None = None
    gate: Gate | None = None
    staged: tuple[StagedValue, ...] = ()


@dataclass(frozen=True, slots=True)
class StepTransition:
    """Result of :meth:`RunStore.finish_step`.

    ``applied`` is False when the step was already terminal (a redelivered completion):
    nothing changed and ``ready`` is empty. ``ready`` are the dependents that became ready
    *because of this call*, each returned to exactly one caller. ``run_status`` is set when
    this call changed the run's status (e.g. ``waiting`` -> ``running``) or left no step
    runnable; the new status was written in the same transaction. A failed step releases
    its dependents like any terminal step; the engine then decides their fate.
    ``claimed`` is the dependent claimed for the caller's :class:`Continuation` (not also
    in ``ready``), when it asked for one and one became ready.
    """

    applied: bool
    ready: tuple[StepRecord, ...] = ()
    run_status: RunStatus | None = None
    claimed: StepRecord | None = None


@dataclass(frozen=True, slots=True)
class Fence:
    """The claim a runner holds on a step: the ``owner`` and ``attempt`` its
    ``claim_step`` returned (a fencing token).

    Given to ``finish_step`` and ``renew_lease``, it makes them apply only while the step
    is still ``running`` under this very claim: a runner whose lease expired and whose
    step another owner claimed again (attempt + 1) can neither renew nor commit.
    """

    owner: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Continuation:
    """Asks ``finish_step`` to claim, in the same transaction, the first dependent that
    became ready (by asset, then partition) for ``owner`` under a ``lease_seconds`` lease,
    exactly as ``claim_step`` would: the caller runs it next without a claim round trip.
    """

    owner: str
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of a run's audit log."""

    id: int
    run_id: str
    at: datetime
    kind: str
    asset: str | None = None
    partition: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The durable result of one scatter item (value JSON-encoded by the core codec)."""

    index: int
    key: str
    state: Literal["succeeded", "failed"]
    value_json: str | None = None
    error: str | None = None
