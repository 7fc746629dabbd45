"""The waits inbox: pending approvals (with a bounded preview of the value to approve) and
pending signal gates, each list keyset-paged."""

from __future__ import annotations

from flowstone_ui.models import GateOut, InboxOut
from flowstone_ui.state import UIState
from flowstone_ui.views_runs import approval_out

__all__ = ["inbox"]


def inbox(
    state: UIState, *, pipeline: str | None, after: int | None, gates_cursor: str | None,
    limit: int,
) -> InboxOut:
    """A page of pending approvals (ids above ``after``) and of pending gates."""
    names = (state.pipeline(pipeline).name,) if pipeline else state.names
    approvals = state.queries.pending_approvals(names, after=after, limit=limit)
    gates, nxt = state.queries.pending_gates(names, cursor=gates_cursor, limit=limit)
    return InboxOut(
        approvals=[approval_out(state.pipelines[a.pipeline], a, with_preview=True)
                   for a in approvals],
        next_after=approvals[-1].id if approvals and len(approvals) >= max(1, min(limit, 500))
        else None,
        gates=[GateOut(pipeline=g.pipeline, run_id=g.run_id, asset=g.asset,
                       partition=g.partition, created_at=g.created_at, expires_at=g.expires_at)
               for g in gates],
        gates_cursor=nxt,
    )  # fmt: skip
