"""Resuming waiting steps: approvals, signal gates, their expiry, and crash recovery.

The store is the arbiter: ``decide_approval`` and ``consume_gate`` succeed exactly once,
so two processes approving (or approving and rejecting) at once cannot both win. The step
is then finished through the normal ``finish_step`` path and its dependents dispatched.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from flowstone.engine.plan import dep_partitions
from flowstone.engine.runner import describe_error, hash_token
from flowstone.engine.timeouts import enforce_parallel_timeouts
from flowstone.errors import ApprovalError, ExecutionError, SignalError, UsageError
from flowstone.partitions import PartitionKey, decode_partition, encode_partition
from flowstone.protocols import StorageKey
from flowstone.records import Approval, Gate, StepOutcome, StepRecord

if TYPE_CHECKING:
    from flowstone.engine.runner import StepRunner

__all__ = [
    "complete_deferred",
    "decide",
    "expire_due",
    "expire_gate",
    "find_approval",
    "recover",
    "signal",
]

log = logging.getLogger("flowstone.engine")


def find_approval(
    runner: StepRunner,
    approval_id: int | None,
    run_id: str | None,
    asset: str | None,
    partition: PartitionKey | None,
) -> Approval:
    p = runner.runtime
    if approval_id is not None:
        if isinstance(approval_id, bool) or not isinstance(approval_id, int):
            raise UsageError(f"approval id must be an int, got {approval_id!r}")
        found = p.store.get_approval(approval_id)
    elif run_id is not None and asset is not None:
        found = p.store.find_approval(run_id, p.graph[asset].name, encode_partition(partition))
    else:
        raise UsageError("pass an approval id, or run_id= and asset= (and partition=)")
    if found is None or found.pipeline != p.name:
        raise ApprovalError(
            f"no approval {approval_id if approval_id is not None else (run_id, asset)} in "
            f"pipeline {p.name!r}; list them with `flowstone approvals`"
        )
    return found


def _step(runner: StepRunner, run_id: str, asset: str, partition: str) -> StepRecord:
    step = runner.runtime.store.get_step(run_id, asset, partition)
    if step is None:
        raise UsageError(f"run {run_id} has no step {asset}[{partition}]")
    return step


def decide(
    runner: StepRunner,
    approval: Approval,
    status: Literal["approved", "rejected", "expired"],
    *,
    by: str | None = None,
    reason: str | None = None,
) -> None:
    """Decide ``approval`` (exactly once, by the store) and finish its step accordingly."""
    p = runner.runtime
    decided = p.store.decide_approval(approval.id, status, by=by, reason=reason)
    p.events.emit(
        "approval.decided", approval.run_id, approval.asset, approval.partition,
        {"approval_id": approval.id, "status": decided.status, "by": by},
    )  # fmt: skip
    _finish_decided(runner, decided)


def _finish_decided(runner: StepRunner, approval: Approval) -> None:
    p = runner.runtime
    step = _step(runner, approval.run_id, approval.asset, approval.partition)
    a = p.graph[approval.asset]
    if approval.status == "approved":
        mat = runner.build_record(
            a,
            step,
            "succeeded",
            io_name=approval.io_manager,
            location=approval.location,
            upstream=_upstream_ids(runner, step),
            metadata={"approved_by": approval.decided_by},
        )
        outcome = StepOutcome("succeeded", materialization=mat)
    else:
        who = f" by {approval.decided_by}" if approval.decided_by else ""
        why = f": {approval.reason}" if approval.reason else ""
        error = f"approval {approval.id} {approval.status}{who}{why}"
        mat = runner.build_record(a, step, "failed", error=error)
        outcome = StepOutcome("failed", materialization=mat, error=error)
    runner.dispatch(step.run_id, runner.complete(step, outcome).ready)


def _upstream_ids(runner: StepRunner, step: StepRecord) -> list[str]:
    """Lineage of a resumed step: this run's materializations of its deps."""
    p = runner.runtime
    a = p.graph[step.asset]
    key = decode_partition(step.partition)
    keys = [
        (dep, encode_partition(uk))
        for dep in a.upstream
        for uk in dep_partitions(p.graph, a, dep, key)
    ]
    found = {(s.asset, s.partition): s for s, _ in p.store.get_step_results(step.run_id, keys)}
    ids = []
    for k in keys:
        s = found.get(k)
        if s is not None and s.materialization_id and s.state == "succeeded":
            ids.append(s.materialization_id)
    return ids


def signal(runner: StepRunner, token: str, payload: Any) -> str:
    if not isinstance(token, str) or not token.startswith("fsg_") or len(token) > 200:
        raise SignalError("that is not a FlowStone signal token (they start with 'fsg_')")
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"signal payload must be JSON-serialisable: {exc}") from exc
    p = runner.runtime
    digest = hash_token(token)
    gate = p.store.get_gate(digest)
    if gate is None or gate.pipeline != p.name or not hmac.compare_digest(gate.token_hash, digest):
        raise SignalError("unknown signal token for this pipeline (wrong pipeline, or a typo?)")
    if gate.metadata.get("kind") == "deferred":
        raise SignalError("that token belongs to a running scatter, not to a signal gate")
    if gate.status != "pending":
        raise SignalError(f"this signal token was already used ({gate.status}); tokens work once")
    if gate.expires_at is not None and gate.expires_at <= datetime.now(gate.expires_at.tzinfo):
        expire_gate(runner, gate)
        raise SignalError(f"this signal token expired at {gate.expires_at.isoformat()}")
    consumed = p.store.consume_gate(digest, payload=payload, status="signaled")
    p.events.emit("gate.signaled", gate.run_id, gate.asset, gate.partition)
    _finish_gate(runner, consumed, payload, expired=False)
    return gate.run_id


def _finish_gate(
    runner: StepRunner, gate: Gate, payload: Any, *, expired: bool, reason: str = ""
) -> None:
    step = _step(runner, gate.run_id, gate.asset, gate.partition)
    a = runner.runtime.graph[gate.asset]
    hook = a.on_timeout if expired else a.on_signal
    context = runner.context_for(a, gate.run_id, gate.partition, max(step.attempt, 1))

    def compute() -> Any:
        if expired and hook is None:
            why = reason or "it expired before anyone signalled it"
            raise SignalError(f"signal gate of {a.name!r}: {why}")
        return (hook(context) if expired else hook(context, payload)) if hook else payload

    _resume_with(runner, step, compute, context.metadata)


def _resume_with(
    runner: StepRunner,
    step: StepRecord,
    compute: Callable[[], Any],
    metadata: Mapping[str, Any],
) -> None:
    """Finish a waiting step with the value ``compute`` returns (through the value layer:
    stored at the attempt's own location, or staged with the finish), or as failed if
    computing or storing it raises."""
    p = runner.runtime
    a = p.graph[step.asset]
    upstream = _upstream_ids(runner, step)
    try:
        value = compute()
        key = StorageKey(
            p.name, a.name, step.partition, step.run_id, attempt=step.attempt, metadata=a.metadata
        )
        stored = p.values.store(a.io_manager, key, value)
        facts = {"value": dict(stored.described)} if stored.described else {}
        mat = runner.build_record(
            a,
            step,
            "succeeded",
            io_name=stored.io_manager,
            location=stored.location,
            upstream=upstream,
            metadata={**metadata, **facts},
        )
        outcome = StepOutcome("succeeded", materialization=mat, staged=stored.staged)
    except Exception as exc:
        error = describe_error(exc)
        mat = runner.build_record(a, step, "failed", error=error, upstream=upstream)
        outcome = StepOutcome("failed", materialization=mat, error=error)
    runner.dispatch(step.run_id, runner.complete(step, outcome).ready)


def expire_gate(runner: StepRunner, gate: Gate, *, reason: str = "") -> bool:
    """Expire ``gate`` now (exactly once, by the store) and finish its step with
    ``on_timeout``, or as failed naming ``reason``; False if it was already used."""
    p = runner.runtime
    try:
        consumed = p.store.consume_gate(gate.token_hash, payload=None, status="expired")
    except SignalError:
        return False  # someone else signalled or expired it first
    p.events.emit("gate.expired", gate.run_id, gate.asset, gate.partition)
    _finish_gate(runner, consumed, None, expired=True, reason=reason)
    return True


def expire_due(runner: StepRunner, now: datetime) -> int:
    p = runner.runtime
    count = 0
    for approval in p.store.due_approvals(now):
        if approval.pipeline != p.name:
            continue
        try:
            decide(runner, approval, "expired", reason="timed out")
        except ApprovalError:
            continue  # decided by someone else meanwhile
        count += 1
    for gate in p.store.due_gates(now):
        if gate.pipeline == p.name and expire_gate(runner, gate):
            count += 1
    if p.branch_index:
        for run in p.store.list_runs(pipeline=p.name, status="running", limit=1000):
            ready, failed = enforce_parallel_timeouts(runner, run.run_id, now)
            runner.dispatch(run.run_id, ready)
            count += len(failed)
    return count


def recover(runner: StepRunner, now: datetime, ready_for_seconds: float) -> int:
    p = runner.runtime
    count = 0
    for step in p.store.stale_steps(now, ready_for_seconds=ready_for_seconds):
        run = p.store.get_run(step.run_id)
        if run is None or run.pipeline != p.name:
            continue
        runner.dispatch(step.run_id, (step,))
        count += 1
    for run in p.store.list_runs(pipeline=p.name, status="waiting", limit=1000):
        for step in p.store.list_steps(run.run_id):
            if step.state != "waiting":
                continue
            approval = p.store.find_approval(run.run_id, step.asset, step.partition)
            if approval is not None and approval.status != "pending":
                try:
                    _finish_decided(runner, approval)
                    count += 1
                except Exception:  # keep sweeping the others
                    log.exception("recovering decided approval %s failed", approval.id)
    return count


def complete_deferred(
    runner: StepRunner, token: str, *, value: Any = None, error: str | None = None
) -> tuple[str, bool]:
    """Finish a step a coordinator deferred (see :class:`flowstone.scatter.Deferred`).

    Stores ``value`` (or records ``error``), finishes the step exactly once and dispatches
    its dependents. Returns ``(run_id, applied)``; ``applied`` is False when another
    process completed it first (a redelivered barrier completion).
    """
    p = runner.runtime
    digest = hash_token(token)
    gate = p.store.get_gate(digest)
    if gate is None or gate.metadata.get("kind") != "deferred" or gate.pipeline != p.name:
        raise SignalError("unknown deferred-step token for this pipeline")
    try:
        p.store.consume_gate(digest, payload=None, status="signaled")
    except SignalError:
        return gate.run_id, False
    step = _step(runner, gate.run_id, gate.asset, gate.partition)

    def compute() -> Any:
        if error is not None:
            raise ExecutionError(error)
        return value

    _resume_with(runner, step, compute, {})
    return gate.run_id, True
