"""Resuming waiting steps: approvals, signal gates, their expiry, and crash recovery.

The store is the arbiter: ``decide_approval`` and ``consume_gate`` succeed exactly once,
so two processes approving (or approving and rejecting) at once cannot both win. The step
is then finished through the normal ``finish_step`` path and its dependents dispatched.

Completion follows the step's state, not the wait's. Consuming a gate also claims its
waiting step for the consumer (the next attempt, under a lease: ``consume_gate(claim=)``),
which stores the value at that attempt's location and finishes fenced by that claim. If
the consumer dies or its bookkeeping fails between the two, the step stays ``waiting``
with its gate used: ``recover()`` (or a retried ``signal()`` / ``complete_deferred``) takes
the lapsed claim over (``take_over_wait``) and finishes it from the payload the gate
recorded. A stale consumer's finish is refused by the fence; its value is an orphan.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from flowstone.engine.plan import dep_partitions
from flowstone.engine.runner import (
    describe_error,
    hash_token,
    is_infrastructure,
    retry_in_place,
)
from flowstone.engine.timeouts import enforce_parallel_timeouts
from flowstone.errors import ApprovalError, ExecutionError, SignalError, StorageError, UsageError
from flowstone.partitions import PartitionKey, decode_partition, encode_partition
from flowstone.protocols import StorageKey
from flowstone.records import Approval, Continuation, Gate, RunRecord, StepOutcome, StepRecord
from flowstone.store_rules import RunKey, run_key

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
_PAGE = 500  # runs per page when sweeping


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
    try:
        decided = p.store.decide_approval(approval.id, status, by=by, reason=reason)
    except ApprovalError:
        if status != "expired":
            _expire_if_late(runner, approval.id)
        raise
    p.events.emit(
        "approval.decided", approval.run_id, approval.asset, approval.partition,
        {"approval_id": approval.id, "status": decided.status, "by": by},
    )  # fmt: skip
    _finish_decided(runner, decided)


def _expire_if_late(runner: StepRunner, approval_id: int) -> None:
    """A decision the store refused although the approval is still pending came too late
    (past ``expires_at`` by the store's clock): expire it now, as a signal past its gate's
    expiry does, instead of leaving it for the sweeper."""
    current = runner.runtime.store.get_approval(approval_id)
    if current is not None and current.status == "pending":
        with contextlib.suppress(ApprovalError):  # someone else decided it meanwhile
            decide(runner, current, "expired", reason="decided after it expired")


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
    if gate.status == "pending":
        try:
            used = p.store.consume_gate(
                digest, payload=payload, status="signaled", claim=_resolver(runner)
            )
        except SignalError:
            gate = p.store.get_gate(digest) or gate
            if gate.status == "pending":
                _refuse_pending(runner, gate)
        else:
            p.events.emit("gate.signaled", gate.run_id, gate.asset, gate.partition)
            step = _step(runner, gate.run_id, gate.asset, gate.partition)
            _finish_gate(runner, step, used, payload, expired=False)
            return gate.run_id
    # already used: a use whose resolver died before finishing is completed (from the
    # payload it recorded), not refused; otherwise a token works once
    if _take_over_gate(runner, gate):
        return gate.run_id
    raise SignalError(f"this signal token was already used ({gate.status}); tokens work once")


def _refuse_pending(runner: StepRunner, gate: Gate) -> None:
    """The store refused to consume a pending gate: its step is no longer waiting (the run
    was cancelled or resumed), or the gate is past its expiry (it expires now)."""
    step = runner.runtime.store.get_step(gate.run_id, gate.asset, gate.partition)
    if step is None or step.state != "waiting":
        raise SignalError(
            f"the step {gate.asset!r} of run {gate.run_id} is no longer waiting for this gate "
            f"({'gone' if step is None else step.state}); the token cannot be used"
        )
    expire_gate(runner, gate)
    when = gate.expires_at.isoformat() if gate.expires_at is not None else "its deadline"
    raise SignalError(f"this signal token expired at {when}")


def _resolver(runner: StepRunner) -> Continuation:
    """The claim a process takes on a waiting step while it resolves the step's wait."""
    return Continuation(runner.owner(), runner.runtime.policies.lease_seconds)


def _take_over_gate(runner: StepRunner, gate: Gate) -> bool:
    """Finish the step of a used signal gate whose resolver's claim lapsed (it died, or its
    bookkeeping failed), from the payload the gate recorded; False if there is none."""
    if gate.status not in ("signaled", "expired") or gate.metadata.get("kind") == "deferred":
        return False
    claim = _resolver(runner)
    step = runner.runtime.store.take_over_wait(
        gate.run_id, gate.asset, gate.partition,
        owner=claim.owner, lease_seconds=claim.lease_seconds,
    )  # fmt: skip
    if step is None:
        return False
    log.warning(
        "finishing %s [%s] of run %s from its %s gate: the process that used the gate did"
        " not finish the step (attempt %d takes over)",
        gate.asset, gate.partition, gate.run_id, gate.status, step.attempt,
    )  # fmt: skip
    expired = gate.status == "expired"
    _finish_gate(runner, step, gate, gate.payload, expired=expired)
    return True


def _finish_gate(
    runner: StepRunner,
    step: StepRecord,
    gate: Gate,
    payload: Any,
    *,
    expired: bool,
    reason: str = "",
) -> None:
    """Finish ``step`` (held by this resolver) with its gate's hook."""
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
) -> bool:
    """Finish a waiting step with the value ``compute`` returns (through the value layer:
    stored at the attempt's own location, or staged with the finish), or as failed if
    computing it raises or the value cannot be stored (it cannot be encoded, say).

    ``compute`` (the user's hook or gather result) runs once. An infrastructure error in
    the engine's own bookkeeping (the value write, the store) is not the asset's failure:
    it is retried here, then raised with the step still held by this resolver, whose
    claim lapses for ``recover()`` or a retry to take over. True if this call finished the
    step (False: someone else did, or the fence refused a stale resolver)."""
    p = runner.runtime
    a = p.graph[step.asset]
    try:
        value = compute()
    except Exception as exc:
        return _finish_failed(runner, step, describe_error(exc))

    def store_and_finish() -> bool:
        upstream = _upstream_ids(runner, step)
        key = StorageKey(
            p.name, a.name, step.partition, step.run_id, attempt=step.attempt,
            metadata=a.metadata,
        )  # fmt: skip
        try:
            stored = p.values.store(a.io_manager, key, value)
        except StorageError as exc:
            if is_infrastructure(exc):
                raise
            return _finish_failed(runner, step, describe_error(exc), upstream)
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
        return _complete(runner, step, outcome)

    what = f"finishing {step.asset} [{step.partition}] of run {step.run_id}"
    return retry_in_place(what, store_and_finish)


def _finish_failed(
    runner: StepRunner, step: StepRecord, error: str, upstream: list[str] | None = None
) -> bool:
    a = runner.runtime.graph[step.asset]
    ups = _upstream_ids(runner, step) if upstream is None else upstream
    mat = runner.build_record(a, step, "failed", error=error, upstream=ups)
    return _complete(runner, step, StepOutcome("failed", materialization=mat, error=error))


def _complete(runner: StepRunner, step: StepRecord, outcome: StepOutcome) -> bool:
    """Finish ``step`` with ``outcome``, dispatch what became ready; True if applied."""
    applied: list[bool] = []
    result = runner.complete(step, outcome, on_applied=lambda: applied.append(True))
    runner.dispatch(step.run_id, result.ready)
    return bool(applied)


def expire_gate(runner: StepRunner, gate: Gate, *, reason: str = "") -> bool:
    """Expire ``gate`` now (exactly once, by the store) and finish its step with
    ``on_timeout``, or as failed naming ``reason``; False if it was already used."""
    p = runner.runtime
    try:
        used = p.store.consume_gate(
            gate.token_hash, payload=None, status="expired", claim=_resolver(runner)
        )
    except SignalError:
        return False  # someone else signalled or expired it first, or the step moved on
    p.events.emit("gate.expired", gate.run_id, gate.asset, gate.partition)
    step = _step(runner, gate.run_id, gate.asset, gate.partition)
    _finish_gate(runner, step, used, None, expired=True, reason=reason)
    return True


def _runs(runner: StepRunner, status: Any) -> Iterator[RunRecord]:
    """The runs of this pipeline in ``status``, newest first, page by page: none that is
    in ``status`` throughout the sweep is skipped (one that enters it meanwhile is seen
    by this sweep or the next). Each page starts after the last run seen
    (``list_runs(after=)``), not at an offset: the sweep moves runs out of ``status`` as
    it goes (it finishes them), which shifted offset pages and skipped as many runs. A
    page is read when the previous one is done, so a sweep holds one page of runs."""
    p = runner.runtime
    after: RunKey | None = None
    while True:
        page = p.store.list_runs(pipeline=p.name, status=status, limit=_PAGE, after=after)
        yield from page
        if len(page) < _PAGE:
            return
        after = run_key(page[-1])


def expire_due(runner: StepRunner, now: datetime | None = None) -> int:
    """Expire approvals and gates past their expiry by the store's clock (``now`` only
    overrides it in tests), and enforce parallel branch timeouts."""
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
        for run in _runs(runner, "running"):
            ready, failed = enforce_parallel_timeouts(runner, run.run_id, now)
            runner.dispatch(run.run_id, ready)
            count += len(failed)
    return count


def recover(runner: StepRunner, now: datetime, ready_for_seconds: float) -> int:
    p = runner.runtime
    count = 0
    # this pipeline's due steps, stamped as re-sent (backing off) by the store, a batch a sweep
    for step in p.store.resend_steps(pipeline=p.name, ready_for_seconds=ready_for_seconds):
        runner.dispatch(step.run_id, (step,))
        count += 1
    for run in _runs(runner, "waiting"):
        for step in p.store.list_steps(run.run_id):
            if step.state != "waiting":
                continue
            try:
                count += _recover_waiting(runner, step)
            except Exception:  # keep sweeping the others
                log.exception(
                    "recovering %s [%s] of run %s failed", step.asset, step.partition, run.run_id
                )
    return count


def _recover_waiting(runner: StepRunner, step: StepRecord) -> int:
    """Finish a waiting step whose wait was already resolved: a decided approval, or a
    used gate whose resolver's claim lapsed. 1 if finished here, else 0."""
    p = runner.runtime
    approval = p.store.find_approval(step.run_id, step.asset, step.partition)
    if approval is not None and approval.status != "pending":
        _finish_decided(runner, approval)
        return 1
    if step.owner is None:
        return 0  # nobody resolved its wait yet
    gate = p.store.find_gate(step.run_id, step.asset, step.partition)
    return 1 if gate is not None and _take_over_gate(runner, gate) else 0


def complete_deferred(
    runner: StepRunner, token: str, *, value: Any = None, error: str | None = None
) -> tuple[str, bool]:
    """Finish a step a coordinator deferred (see :class:`flowstone.scatter.Deferred`).

    Stores ``value`` (or records ``error``), finishes the step exactly once and dispatches
    its dependents. Returns ``(run_id, applied)``; ``applied`` is False when another
    process completed it first (a redelivered barrier completion).
    """
    # the value is in hand (a gather already ran): a store error from here on is retried
    # in place, never by running the coordinator's gather again
    gate, step = retry_in_place(
        "claiming a deferred step", lambda: _claim_deferred(runner, hash_token(token))
    )
    if step is None:
        return gate.run_id, False

    def compute() -> Any:
        if error is not None:
            raise ExecutionError(error)
        return value

    return gate.run_id, _resume_with(runner, step, compute, {})


def _claim_deferred(runner: StepRunner, digest: str) -> tuple[Gate, StepRecord | None]:
    """The deferred gate and its step, held for this completion; None for the step when
    another completion finished it or holds it alive."""
    p = runner.runtime
    gate = p.store.get_gate(digest)
    if gate is None or gate.metadata.get("kind") != "deferred" or gate.pipeline != p.name:
        raise SignalError("unknown deferred-step token for this pipeline")
    # only storing the value and the finish remain, so a short claim lets a re-run
    # finalize take over soon after this process dies (its gather runs again)
    claim = Continuation(runner.owner(), min(p.policies.lease_seconds, 60.0))
    try:
        p.store.consume_gate(digest, payload=None, status="signaled", claim=claim)
    except SignalError:
        # used: an earlier completion whose process died (or whose bookkeeping failed, or
        # this one, whose consume committed but whose answer was lost) is taken over; a
        # live one, or a finished step, is left alone
        held = p.store.take_over_wait(
            gate.run_id, gate.asset, gate.partition,
            owner=claim.owner, lease_seconds=claim.lease_seconds,
        )  # fmt: skip
        return gate, held
    return gate, _step(runner, gate.run_id, gate.asset, gate.partition)
