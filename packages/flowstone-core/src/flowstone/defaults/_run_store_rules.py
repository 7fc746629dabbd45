"""Rules shared by the in-process run stores (memory and SQLite).

Kept in one place so the two stores cannot drift apart: plan validation, the run-status
rule, outcome checks, JSON encoding with errors that name the field, and UTC handling.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from flowstone.errors import ApprovalError, StorageError, UsageError
from flowstone.records import TERMINAL_STEP_STATES, RunStatus, StepOutcome, StepRecord, StepSpec

StepKey = tuple[str, str]

# Steps a worker can make progress on right now (or already is).
ACTIVE_STEP_STATES: frozenset[str] = frozenset({"ready", "queued", "running"})
# States from which finish_step accepts an outcome.
FINISHABLE_STEP_STATES: frozenset[str] = frozenset({"ready", "queued", "running", "waiting"})
TERMINAL_RUN_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
REOPENABLE_STEP_STATES: frozenset[str] = frozenset({"failed", "upstream_failed", "cancelled"})


def utc_now() -> datetime:
    """The stores' clock: aware UTC."""
    return datetime.now(UTC)


def require_utc(value: datetime, field: str) -> datetime:
    """Return ``value`` in UTC; reject naive datetimes, which would be ambiguous."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise UsageError(
            f"{field} must be a timezone-aware datetime, got naive {value.isoformat()}; "
            "pass e.g. datetime.now(timezone.utc)"
        )
    return value.astimezone(UTC)


def to_json(value: Any, field: str) -> str:
    """Encode a JSON-able value; raise ``StorageError`` naming ``field`` if it is not."""
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


def run_status_from(states: Collection[str]) -> RunStatus:
    """The run-status rule of :meth:`RunStore.finish_step`, from the set of step states.

    A ``pending`` step with nothing active or waiting cannot happen in a consistent plan
    (a terminal dep always releases its dependents); it is reported ``running`` so such a
    run is never shown as finished.
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


def plan_remaining(run_id: str, steps: Sequence[StepSpec]) -> list[int]:
    """Validate a plan and return each step's initial ``remaining_deps``.

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
    remaining: list[int] = []
    for spec in steps:
        count = 0
        for dep in dict.fromkeys(spec.deps):  # a dep listed twice is still one dep
            dep_state = states.get(dep)
            if dep_state is None:
                raise UsageError(
                    f"run {run_id!r}: step {spec.asset!r} partition {spec.partition!r} "
                    f"depends on {dep[0]!r} partition {dep[1]!r}, which is not in the plan; "
                    "add that step to the plan (state='succeeded' if its value is reused)"
                )
            if dep_state != "succeeded":
                count += 1
        remaining.append(count)
    return remaining


def check_outcome(outcome: StepOutcome, where: str) -> None:
    """Reject outcomes that do not say what the store must record."""
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


def continuation_key(ready: Sequence[StepRecord], now: datetime) -> tuple[str, str] | None:
    """Which of the newly ready steps a ``Continuation`` claims: the first by (asset,
    partition) that may run now."""
    due = [s for s in ready if s.not_before is None or s.not_before <= now]
    if not due:
        return None
    first = min(due, key=lambda s: (s.asset, s.partition))
    return first.asset, first.partition


def not_finishable(run_id: str, asset: str, partition: str, state: str) -> UsageError:
    """The error for finishing a step that has not been released yet."""
    return UsageError(
        f"run {run_id!r}: step {asset!r} partition {partition!r} is {state!r}; only ready, "
        "running or waiting steps can be finished (wait until its deps finish)"
    )


def step_not_found(run_id: str, asset: str, partition: str) -> StorageError:
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
