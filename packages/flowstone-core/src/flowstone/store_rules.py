"""The rules every run store applies, written once.

A :class:`~flowstone.protocols.RunStore` decides *where* state lives (a dict, a SQLite
file, PostgreSQL); this module decides *what* is allowed and what a call leaves behind, so
the memory, SQLite and Postgres stores (and a store you write) cannot drift apart:

* plans: :func:`plan_steps` validates a plan and gives each step its first state and
  ``remaining_deps``;
* outcomes: :func:`check_outcome` rejects an outcome that does not say what to record,
  :func:`bind_outcome` binds its records to the step and encodes their JSON before any
  write, :func:`finish_applies` / :func:`accepted_states` say whether ``finish_step``
  applies, and :func:`finish_detail` is the audit detail it writes;
* the run status: :func:`run_status_from`, :func:`next_run_status` (a cancelled run stays
  cancelled) and :func:`reported_status`;
* continuations: :func:`continuation_key`; step notes: :func:`check_note`;
* paging runs: :func:`run_key` and :func:`check_run_keyset` (``list_runs(after=)``);
* values: :func:`to_json` / :func:`json_copy` (JSON columns) and :func:`require_utc`;
* errors: the messages a user sees for the same mistake on every store.

The contract suite (:mod:`flowstone.testing.store_contract`) pins each rule.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from flowstone.errors import ApprovalError, RunNotFoundError, SignalError, StorageError, UsageError
from flowstone.records import (
    TERMINAL_STEP_STATES,
    Approval,
    Fence,
    Gate,
    MaterializationRecord,
    RunRecord,
    RunStatus,
    StepOutcome,
    StepRecord,
    StepSpec,
)

__all__ = [
    "ACTIVE_STEP_STATES",
    "FINISHABLE_STEP_STATES",
    "REOPENABLE_STEP_STATES",
    "RESEND_BACKOFF_DOUBLINGS",
    "RESEND_BATCH",
    "TERMINAL_RUN_STATUSES",
    "BoundOutcome",
    "PlannedStep",
    "RunKey",
    "StepKey",
    "accepted_states",
    "approval_not_decidable",
    "bind_outcome",
    "check_finishable",
    "check_note",
    "check_outcome",
    "check_run_keyset",
    "claim_facts",
    "claimable_by",
    "continuation_key",
    "decision_audit",
    "duplicate_run",
    "fence_holds",
    "finish_applies",
    "finish_detail",
    "gate_not_consumable",
    "is_unchanged",
    "json_copy",
    "next_run_status",
    "not_finishable",
    "plan_steps",
    "reported_status",
    "require_utc",
    "resend_backoff_seconds",
    "resend_due",
    "retry_detail",
    "run_key",
    "run_not_found",
    "run_status_from",
    "step_not_found",
    "to_json",
    "utc_now",
    "wait_takeable",
    "wait_too_late",
]

StepKey = tuple[str, str]
"""A step of a run: ``(asset, encoded partition)``."""
RunKey = tuple[datetime, str]
"""Where a run stands in ``list_runs``' order: ``(created_at, run_id)``, newest first."""

ACTIVE_STEP_STATES: frozenset[str] = frozenset({"ready", "queued", "running"})
"""Steps a worker can make progress on right now (or already is)."""
FINISHABLE_STEP_STATES: frozenset[str] = frozenset({"ready", "queued", "running", "waiting"})
"""States from which ``finish_step`` accepts an outcome."""
TERMINAL_RUN_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
REOPENABLE_STEP_STATES: frozenset[str] = frozenset({"failed", "upstream_failed", "cancelled"})
"""The steps ``reopen_run`` puts back to pending."""


# --- paging runs -------------------------------------------------------------------------
def run_key(run: RunRecord) -> RunKey:
    """``run``'s place in ``list_runs``' order; pass the last run's of a page as the next
    page's ``after=``."""
    return run.created_at, run.run_id


def check_run_keyset(after: object, offset: int) -> RunKey | None:
    """``list_runs(after=)`` validated (``created_at`` in UTC), or None when not given.

    ``after`` is the :func:`run_key` of the last run of the previous page: the page holds
    the runs listed after it (older, or as old with a smaller ``run_id``). Unlike
    ``offset``, a run that leaves the filter (its status changed) does not shift the
    pages after it, so a sweep that acts on the runs it pages through skips none.

    Raises:
        UsageError: ``after`` is not a ``(datetime, str)`` pair, its datetime is naive, or
            ``offset`` is given too.
    """
    if after is None:
        return None
    if (
        not isinstance(after, tuple)
        or len(after) != 2
        or not isinstance(after[0], datetime)
        or not isinstance(after[1], str)
    ):
        raise UsageError(
            f"list_runs(after=) takes the (created_at, run_id) of the last run of the "
            f"previous page, e.g. (run.created_at, run.run_id); got {after!r}"
        )
    if offset:
        raise UsageError(
            f"list_runs: pass after= or offset= (got offset={offset!r}), not both; after= "
            "already says where the page starts"
        )
    return require_utc(after[0], "list_runs(after=) created_at"), after[1]


# --- values ----------------------------------------------------------------------------
def utc_now() -> datetime:
    """The stores' clock: aware UTC."""
    return datetime.now(UTC)


def require_utc(value: datetime, field: str) -> datetime:
    """Return ``value`` in UTC; reject naive datetimes, which would be ambiguous.

    Raises:
        UsageError: ``value`` is naive, naming ``field``.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise UsageError(
            f"{field} must be a timezone-aware datetime, got naive {value.isoformat()}; "
            "pass e.g. datetime.now(timezone.utc)"
        )
    return value.astimezone(UTC)


def to_json(value: Any, field: str) -> str:
    """Encode a JSON-able value as compact JSON text (the form every store keeps).

    Raises:
        StorageError: naming ``field`` when the value is not JSON-able (NaN included).
    """
    if type(value) is dict and not value:
        return "{}"  # (most metadata: no encoder needed)
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"{field} is not JSON-serializable ({exc}); run stores persist only dicts, "
            "lists, str, int, float (finite), bool and None"
        ) from exc


def json_copy(value: Any, field: str) -> Any:
    """Validate and deep-copy a JSON-able value exactly as a durable store would return it."""
    return json.loads(to_json(value, field))


# --- plans and run status ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One step of a validated plan as ``create_run`` writes it.

    Attributes:
        spec: the step as planned.
        state: ``succeeded`` (reused), ``ready`` (nothing to wait for) or ``pending``.
        remaining_deps: how many deps are not yet succeeded (0 for a reused step).
        deps: the step's deps without repeats, in plan order.
    """

    spec: StepSpec
    state: Literal["pending", "ready", "succeeded"]
    remaining_deps: int
    deps: tuple[StepKey, ...]


def plan_steps(run_id: str, steps: Sequence[StepSpec]) -> list[PlannedStep]:
    """Validate a plan and give each step its first state and ``remaining_deps``.

    A dep on a step planned ``succeeded`` (reused) counts as satisfied; a dep listed twice
    is one dep.

    Raises:
        UsageError: a step appears twice, or a dep names a step that is not in the plan.
    """
    states: dict[StepKey, str] = {}
    for spec in steps:
        key = (spec.asset, spec.partition)
        if key in states:
            raise UsageError(
                f"run {run_id!r}: step {spec.asset!r} partition {spec.partition!r} appears "
                "twice in the plan; each (asset, partition) must be planned once"
            )
        states[key] = spec.state
    planned: list[PlannedStep] = []
    for spec in steps:
        deps = tuple(dict.fromkeys(spec.deps))
        count = 0
        for dep in deps:
            dep_state = states.get(dep)
            if dep_state is None:
                raise UsageError(
                    f"run {run_id!r}: step {spec.asset!r} partition {spec.partition!r} "
                    f"depends on {dep[0]!r} partition {dep[1]!r}, which is not in the plan; "
                    "add that step to the plan (state='succeeded' if its value is reused)"
                )
            if dep_state != "succeeded":
                count += 1
        if spec.state == "succeeded":
            planned.append(PlannedStep(spec, "succeeded", 0, deps))
        else:
            planned.append(PlannedStep(spec, "ready" if count == 0 else "pending", count, deps))
    return planned


def run_status_from(states: Collection[str]) -> RunStatus:
    """The run-status rule of :meth:`RunStore.finish_step`, from the set of step states.

    Some step ready/queued/running -> ``running``; else some waiting -> ``waiting``; else
    ``failed`` if any step failed or upstream_failed, ``cancelled`` if any was cancelled,
    else ``succeeded``. A ``pending`` step with nothing active or waiting cannot happen in
    a consistent plan (a terminal dep always releases its dependents); it is reported
    ``running`` so such a run is never shown as finished.
    """
    if not ACTIVE_STEP_STATES.isdisjoint(states):
        return "running"
    if "waiting" in states:
        return "waiting"
    if "pending" in states:
        return "running"
    if "failed" in states or "upstream_failed" in states:
        return "failed"
    if "cancelled" in states:
        return "cancelled"
    return "succeeded"


def next_run_status(before: str, computed: RunStatus) -> RunStatus:
    """The run's status after a ``finish_step`` that computed ``computed`` from the steps:
    a cancelled run stays cancelled (a late completion is recorded, the run is not
    revived; only ``reopen_run`` does that)."""
    return "cancelled" if before == "cancelled" else computed


def reported_status(before: str, after: RunStatus) -> RunStatus | None:
    """``StepTransition.run_status``: the run's new status when the call changed it."""
    return after if after != before else None


# --- finishing a step ---------------------------------------------------------------------
def check_outcome(outcome: StepOutcome, where: str) -> None:
    """Reject outcomes that do not say what the store must record.

    Raises:
        UsageError: a ``waiting`` outcome without exactly one of approval/gate, or an
            approval/gate on any other state (it would be silently dropped).
    """
    if outcome.state == "waiting":
        if (outcome.approval is None) == (outcome.gate is None):
            raise UsageError(
                f"{where}: a 'waiting' outcome needs exactly one of approval= or gate="
            )
    elif outcome.approval is not None or outcome.gate is not None:
        raise UsageError(
            f"{where}: approval=/gate= are only valid with state='waiting', not {outcome.state!r}"
        )


def is_unchanged(current: str, outcome: StepOutcome) -> bool:
    """True when ``finish_step`` must not apply: a redelivered completion.

    A terminal step never changes again, and a step already waiting ignores a second
    'waiting' outcome (it would otherwise create a second approval or gate).
    """
    return current in TERMINAL_STEP_STATES or (current == "waiting" and outcome.state == "waiting")


def accepted_states(outcome: StepOutcome) -> frozenset[str]:
    """The step states from which ``finish_step`` applies ``outcome`` (for a store that
    checks the state in the write itself, e.g. ``UPDATE ... WHERE state IN (...)``)."""
    return ACTIVE_STEP_STATES if outcome.state == "waiting" else FINISHABLE_STEP_STATES


def check_finishable(state: str | None, run_id: str, asset: str, partition: str) -> None:
    """Raise unless a step in ``state`` (None: no such step) can take a ``finish_step``:
    released (ready, queued, running, waiting) or already terminal (a redelivery).

    Raises:
        StorageError: the run has no such step.
        UsageError: the step is still pending (its deps have not finished).
    """
    if state is None:
        raise step_not_found(run_id, asset, partition)
    if state not in FINISHABLE_STEP_STATES and state not in TERMINAL_STEP_STATES:
        raise not_finishable(run_id, asset, partition, state)


def finish_applies(
    state: str | None,
    outcome: StepOutcome,
    run_id: str,
    asset: str,
    partition: str,
    *,
    fence: Fence | None = None,
    owner: str | None = None,
    attempt: int = 0,
) -> bool:
    """Whether ``finish_step`` applies ``outcome`` to a step in ``state`` (None: no step)
    held by ``owner`` at ``attempt``.

    Returns False for a redelivered completion (:func:`is_unchanged`) and for a fenced
    finish whose claim no longer holds (:func:`fence_holds`): nothing changes.

    Raises:
        StorageError | UsageError: as :func:`check_finishable`.
    """
    check_finishable(state, run_id, asset, partition)
    assert state is not None
    return fence_holds(fence, state, owner, attempt) and not is_unchanged(state, outcome)


def fence_holds(fence: Fence | None, state: str, owner: str | None, attempt: int) -> bool:
    """Whether a ``finish_step`` or ``renew_lease`` under ``fence`` may act on a step in
    ``state`` held by ``owner`` at ``attempt``: only while it is ``running`` under that
    very claim (same owner, same attempt). A runner whose lease expired and whose step was
    claimed again by someone else (attempt + 1), finished, or released is refused.

    A ``waiting`` step is held the same way while a process resolves its wait (a consumed
    gate: ``consume_gate(claim=...)``, :func:`wait_takeable`): only that resolver's finish
    applies. Without a fence (None: an approval's decision, which writes no value) the
    step's state alone decides.
    """
    if fence is None:
        return True
    return state in _HELD and owner == fence.owner and attempt == fence.attempt


_HELD = frozenset(("running", "waiting"))


def wait_takeable(
    state: str, owner: str | None, lease_expires_at: datetime | None, by: str, now: datetime
) -> bool:
    """Whether ``take_over_wait`` by ``by`` may claim a step: it is ``waiting`` under a
    resolver's claim (its wait was consumed, the finish did not happen) that lapsed by
    ``now`` (the store's clock), or ``by`` is that resolver trying again."""
    if state != "waiting" or owner is None:
        return False
    return owner == by or (lease_expires_at is not None and lease_expires_at <= now)


RESEND_BATCH = 500
"""The most steps one ``resend_steps`` call returns (one sweep): a backlog is re-sent in
bounded batches, oldest first."""
RESEND_BACKOFF_DOUBLINGS = 6
"""A step's n-th re-send waits ``ready_for_seconds * 2**min(n, 6)`` after the previous
one: with a 60 s recover interval, at most one re-send an hour per step once backed off."""


def resend_backoff_seconds(ready_for_seconds: float, resends: int) -> float:
    """How long after its last re-send a step is re-sent again by ``resend_steps``: the
    recover interval doubled per re-send already made (capped at
    :data:`RESEND_BACKOFF_DOUBLINGS` doublings)."""
    return ready_for_seconds * float(2 ** min(resends, RESEND_BACKOFF_DOUBLINGS))


def resend_due(
    state: str,
    *,
    now: datetime,
    ready_for_seconds: float,
    updated_at: datetime | None,
    not_before: datetime | None,
    lease_expires_at: datetime | None,
    resent_at: datetime | None,
    resends: int,
) -> bool:
    """Whether a sweeper should re-send a step now (``resend_steps``): ``ready`` for at
    least ``ready_for_seconds`` since it became ready (or since ``not_before``, if later)
    and runnable, or ``running`` under an expired lease; and, if it was re-sent before,
    :func:`resend_backoff_seconds` have passed since. A claim resets the count."""
    if state == "ready":
        since = updated_at or now
        if not_before is not None:
            if not_before > now:
                return False
            since = max(since, not_before)
        if (now - since).total_seconds() < ready_for_seconds:
            return False
    elif state != "running" or lease_expires_at is None or lease_expires_at > now:
        return False
    if resent_at is None:
        return True
    return (now - resent_at).total_seconds() >= resend_backoff_seconds(ready_for_seconds, resends)


def claim_facts(
    state: str,
    owner: str | None,
    updated_at: datetime | None,
    not_before: datetime | None,
    *,
    claimer: str,
    now: datetime,
) -> tuple[float | None, bool]:
    """What a claim reports beside the step (``StepRecord.queued_s`` and ``took_over``),
    from the step as it was just before the claim: how long a ``ready`` step had waited
    (since it became ready, or since ``not_before`` if later; None for a take-over), and
    whether the claim took over another owner's expired lease."""
    if state == "ready":
        since = updated_at or now
        if not_before is not None:
            since = max(since, not_before)
        return max(0.0, (now - since).total_seconds()), False
    return None, owner is not None and owner != claimer


def claimable_by(pipeline: str | None, run_pipeline: str) -> bool:
    """Whether a ``claim_step`` from ``pipeline`` may claim a step of a run of
    ``run_pipeline``: a message naming one pipeline must never run its asset inside
    another pipeline's run (one store can serve several pipelines). None: not checked."""
    return pipeline is None or pipeline == run_pipeline


@dataclass(frozen=True, slots=True)
class BoundOutcome:
    """An outcome's records bound to the step they belong to, JSON encoded and checked
    before any write (a bad value must not leave a half write).

    The materialization, approval and gate carry the step's run, asset and partition
    whatever the caller put there; the approval and gate are ``pending``; the
    materialization's upstream ids are without repeats, and it is not invalidated (only
    ``invalidate`` does that). ``*_json`` hold the JSON columns
    (None where there is no record).
    """

    materialization: MaterializationRecord | None = None
    approval: Approval | None = None
    gate: Gate | None = None
    materialization_metadata_json: str | None = None
    approval_metadata_json: str | None = None
    gate_payload_json: str | None = None
    gate_metadata_json: str | None = None


def bind_outcome(
    run_id: str, asset: str, partition: str, outcome: StepOutcome, where: str
) -> BoundOutcome:
    """Check ``outcome`` (:func:`check_outcome`), bind its records to the step and encode
    their JSON.

    Raises:
        UsageError: as :func:`check_outcome`.
        StorageError: a metadata mapping or gate payload is not JSON-able.
    """
    check_outcome(outcome, where)
    bound: dict[str, Any] = {}
    if (mat := outcome.materialization) is not None:
        upstream = tuple(dict.fromkeys(mat.upstream))
        if (mat.run_id, mat.asset, mat.partition, mat.upstream, mat.invalidated) != (
            run_id, asset, partition, upstream, False
        ):  # (the engine's own records are bound already: no copy)
            mat = replace(mat, run_id=run_id, asset=asset, partition=partition,
                          upstream=upstream, invalidated=False)  # fmt: skip
        bound["materialization"] = mat
        bound["materialization_metadata_json"] = to_json(
            dict(mat.metadata), f"metadata of materialization {mat.id!r}"
        )
    if (approval := outcome.approval) is not None:
        bound["approval"] = replace(
            approval, run_id=run_id, asset=asset, partition=partition, status="pending"
        )
        bound["approval_metadata_json"] = to_json(
            dict(approval.metadata), f"metadata of approval for {asset!r}"
        )
    if (gate := outcome.gate) is not None:
        bound["gate"] = replace(
            gate, run_id=run_id, asset=asset, partition=partition, status="pending"
        )
        bound["gate_payload_json"] = to_json(gate.payload, f"payload of gate for {asset!r}")
        bound["gate_metadata_json"] = to_json(
            dict(gate.metadata), f"metadata of gate for {asset!r}"
        )
    return BoundOutcome(**bound)


def finish_detail(attempt: int | None, outcome: StepOutcome) -> dict[str, Any]:
    """The audit detail of ``step_<state>`` (a store adds ``approval_id`` once assigned).

    ``attempt`` is the step's attempt, None for a store that does not read it first.
    """
    detail: dict[str, Any] = {} if attempt is None else {"attempt": attempt}
    if outcome.error is not None:
        detail["error"] = outcome.error
    if outcome.materialization is not None:
        detail["materialization_id"] = outcome.materialization.id
    return detail


def continuation_key(ready: Sequence[StepRecord], now: datetime) -> StepKey | None:
    """Which of the newly ready steps a ``Continuation`` claims: the first by (asset,
    partition) that may run now."""
    due = [s for s in ready if s.not_before is None or s.not_before <= now]
    if not due:
        return None
    first = min(due, key=lambda s: (s.asset, s.partition))
    return first.asset, first.partition


# --- step notes --------------------------------------------------------------------------
def check_note(kind: str, value: str) -> None:
    """Reject a step note a store could not keep as given.

    Raises:
        UsageError: ``kind`` is empty or not a string, or ``value`` is not a string.
    """
    if not isinstance(kind, str) or not kind:
        raise UsageError(f"a step note needs a non-empty kind string, got {kind!r}")
    if not isinstance(value, str):
        raise UsageError(
            f"step note {kind!r} must be a string, got {type(value).__name__}; "
            "encode structured notes as JSON text"
        )


# --- audit -----------------------------------------------------------------------------------
def retry_detail(attempt: int, error: str, not_before: datetime) -> dict[str, Any]:
    """The audit detail of ``step_retry``."""
    return {"attempt": attempt, "error": error, "not_before": not_before.isoformat()}


def decision_audit(
    approval_id: int, status: str, by: str | None, reason: str | None
) -> tuple[str, Mapping[str, Any]]:
    """The audit kind and detail ``decide_approval`` appends."""
    return f"approval_{status}", {"approval_id": approval_id, "by": by, "reason": reason}


# --- errors ------------------------------------------------------------------------------------
def duplicate_run(run_id: str) -> StorageError:
    """The error for ``create_run`` with a run id that exists."""
    return StorageError(
        f"run {run_id!r} already exists; run ids must be unique (generate a new one for a new run)"
    )


def run_not_found(run_id: str, store: str) -> RunNotFoundError:
    """The error for a call naming a run the store does not have."""
    return RunNotFoundError(f"no run {run_id!r} in the {store}; list runs with `flowstone runs`")


def not_finishable(run_id: str, asset: str, partition: str, state: str) -> UsageError:
    """The error for finishing a step that has not been released yet."""
    return UsageError(
        f"run {run_id!r}: step {asset!r} partition {partition!r} is {state!r}; only ready, "
        "running or waiting steps can be finished (wait until its deps finish)"
    )


def step_not_found(run_id: str, asset: str, partition: str) -> StorageError:
    """The error for finishing a step that is not in the run's plan."""
    return StorageError(
        f"run {run_id!r} has no step {asset!r} partition {partition!r}; "
        "check the run id and that the asset is part of the run's plan"
    )


def approval_not_decidable(approval_id: int, status: str | None, by: str | None) -> ApprovalError:
    """The error for deciding an unknown (``status`` None) or already decided approval."""
    if status is None:
        return ApprovalError(
            f"approval {approval_id} does not exist; list pending approvals with "
            "`flowstone approvals` to find the right id"
        )
    return ApprovalError(
        f"approval {approval_id} was already {status}"
        f"{f' by {by}' if by else ''}; an approval can be decided only once"
    )


def gate_not_consumable(status: str | None, run_id: str = "", asset: str = "") -> SignalError:
    """The error for consuming an unknown (``status`` None) or already used signal gate."""
    if status is None:
        return SignalError(
            "unknown signal token; check that the token was copied whole and "
            "belongs to this pipeline's store"
        )
    return SignalError(
        f"signal gate of run {run_id!r} asset {asset!r} is already {status}; "
        "a token works only once"
    )


def wait_too_late(what: str, expires_at: datetime | None) -> str:
    """The message for deciding or signalling ``what`` after its ``expires_at``."""
    when = expires_at.isoformat() if expires_at is not None else "its deadline"
    return (
        f"{what} expired at {when} (by the store's clock) and can no longer be decided; "
        "the sweeper expires it (on_timeout runs); start a new run to ask again"
    )
