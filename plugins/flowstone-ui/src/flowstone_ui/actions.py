"""What the UI's buttons do, through the pipelines' public methods only: approve, reject,
cancel, resume, retry failed scatter items, backfill. Each names who acted; approvals keep
the decider in their own audit entry, the rest add a ``ui_action`` entry to the run's."""

from __future__ import annotations

from flowstone.errors import ApprovalError, UsageError
from flowstone.partitions import decode_partition, parse_partition
from flowstone_ui.models import ActionOut, BackfillOut
from flowstone_ui.state import UIState

__all__ = ["backfill", "cancel", "decide", "resume", "retry_items"]


def decide(
    state: UIState, approval_id: int, *, approve: bool, by: str, reason: str | None
) -> ActionOut:
    """Approve or reject a pending approval (``by`` is recorded as the decider).

    Raises:
        ApprovalError: no such approval among the pipelines shown, or it is not pending.
    """
    store = next(iter(state.pipelines.values())).store
    found = store.get_approval(approval_id)
    if found is None or found.pipeline not in state.pipelines:
        raise ApprovalError(f"approval {approval_id} does not exist here")
    pipeline = state.pipelines[found.pipeline]
    if approve:
        result = pipeline.approve(approval_id, by=by)
    else:
        result = pipeline.reject(approval_id, by=by, reason=reason)
    verb = "approved" if approve else "rejected"
    return ActionOut(ok=True, message=f"approval {approval_id} {verb} by {by}",
                     run_id=result.run_id, status=result.status)  # fmt: skip


def _note(state: UIState, run_id: str, action: str, by: str, **extra: str) -> None:
    pipeline, _ = state.run(run_id)
    pipeline.store.append_audit(run_id, "ui_action", detail={"action": action, "by": by, **extra})


def cancel(state: UIState, run_id: str, *, by: str) -> ActionOut:
    pipeline, _ = state.run(run_id)
    _note(state, run_id, "cancel", by)
    done = pipeline.cancel(run_id)
    message = f"run {run_id} cancelled by {by}" if done else f"run {run_id} had already finished"
    return ActionOut(ok=done, message=message, run_id=run_id,
                     status=pipeline.store.get_run(run_id).status)  # type: ignore[union-attr]


def resume(state: UIState, run_id: str, *, by: str) -> ActionOut:
    pipeline, run = state.run(run_id)
    if run.status not in ("failed", "cancelled"):
        raise UsageError(f"run {run_id} is {run.status}; only failed or cancelled runs resume")
    _note(state, run_id, "resume", by)
    result = pipeline.resume(run_id)
    return ActionOut(ok=True, message=f"run {run_id} resumed by {by}", run_id=run_id,
                     status=result.status)  # fmt: skip


def retry_items(state: UIState, run_id: str, asset: str, partition: str, *, by: str) -> ActionOut:
    """Re-run the failed items of a scatter step of a finished run (a new run)."""
    pipeline, _ = state.run(run_id)
    key = decode_partition(partition) if partition else None
    _note(state, run_id, "retry_failed_items", by, asset=asset, partition=partition)
    result = pipeline.retry_failed_items(run_id, asset, key)
    return ActionOut(ok=True, message=f"failed items of {asset} re-run in {result.run_id}",
                     run_id=result.run_id, status=result.status)  # fmt: skip


def backfill(
    state: UIState, pipeline_name: str, asset: str, *, start: str, end: str, parallel: int,
    by: str,
) -> BackfillOut:
    """Start a backfill of ``asset`` over ``start``..``end`` (keys as typed on the page)."""
    pipeline = state.pipeline(pipeline_name)
    a = pipeline.dag[asset]
    if a.partitions is None:
        raise UsageError(f"asset {a.name!r} has no partition set to backfill over")
    first = parse_partition(start, a.partitions)
    last = parse_partition(end, a.partitions)
    return state.backfills.start(pipeline, a.name, first, last, parallel=parallel)
