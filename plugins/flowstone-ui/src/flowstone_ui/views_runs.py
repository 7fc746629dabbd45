"""Runs: the keyset-paged list, one run's detail, and its scatters' progress."""

from __future__ import annotations

from datetime import datetime

from flowstone.errors import UsageError
from flowstone.pipeline import Pipeline
from flowstone.records import TERMINAL_STEP_STATES, Approval, MaterializationRecord, RunRecord
from flowstone.scatter import ScatterProgress
from flowstone_ui.graph import asset_kind
from flowstone_ui.models import (
    ApprovalOut,
    AuditOut,
    ItemOut,
    ItemPageOut,
    PreviewOut,
    RouteOut,
    RunDetailOut,
    RunOut,
    RunPageOut,
    ScatterOut,
    StepOut,
)
from flowstone_ui.preview import preview
from flowstone_ui.queries import RunFilter
from flowstone_ui.state import UIState

__all__ = [
    "RUN_STATUSES",
    "approval_out",
    "failed_items",
    "list_runs",
    "run_detail",
    "run_out",
    "running_scatters",
    "scatter_progress",
]

RUN_STATUSES = ("running", "waiting", "succeeded", "failed", "cancelled")
AUDIT_PAGE = 200
_WAITED = frozenset({"step_waiting"})


def run_out(r: RunRecord) -> RunOut:
    return RunOut(
        run_id=r.run_id, pipeline=r.pipeline, targets=list(r.targets), partition=r.partition,
        status=r.status, created_at=r.created_at, updated_at=r.updated_at, error=r.error,
        tags=dict(r.tags),
    )  # fmt: skip


def list_runs(
    state: UIState, *, pipeline: str | None, status: str | None, asset: str | None,
    since: datetime | None, until: datetime | None, cursor: str | None, limit: int,
) -> RunPageOut:
    """A page of runs (see :class:`~flowstone_ui.queries.RunFilter`).

    Raises:
        UsageError: an unknown status, pipeline or asset, or a bad cursor.
    """
    if status is not None and status not in RUN_STATUSES:
        raise UsageError(f"status {status!r} is not one of {', '.join(RUN_STATUSES)}")
    names = (state.pipeline(pipeline).name,) if pipeline else state.names
    if asset is not None and not any(asset in state.pipelines[n].dag for n in names):
        raise UsageError(f"no asset {asset!r} in {', '.join(names)}")
    runs, nxt = state.queries.runs(RunFilter(
        pipelines=names, status=status, asset=asset, since=since, until=until, cursor=cursor,
        limit=limit,
    ))  # fmt: skip
    return RunPageOut(runs=[run_out(r) for r in runs], next_cursor=nxt)


def approval_out(pipeline: Pipeline, a: Approval, *, with_preview: bool) -> ApprovalOut:
    shown = None
    if with_preview and a.io_manager is not None and a.location is not None:
        shown = _load_preview(pipeline, a.io_manager, a.location)
    return ApprovalOut(
        id=a.id, pipeline=a.pipeline, run_id=a.run_id, asset=a.asset, partition=a.partition,
        message=a.message, status=a.status, created_at=a.created_at, expires_at=a.expires_at,
        decided_by=a.decided_by, decided_at=a.decided_at, reason=a.reason, preview=shown,
    )  # fmt: skip


def _load_preview(pipeline: Pipeline, manager: str, location: str) -> PreviewOut:
    try:
        value = pipeline.io_manager(manager).load(location)
    except Exception as exc:  # shown instead of the value; the page still renders
        return PreviewOut(type="error", text=f"cannot load the value: {exc}", truncated=False)
    kind, text, cut = preview(value)
    return PreviewOut(type=kind, text=text, truncated=cut)


def run_detail(state: UIState, run_id: str, *, audit_after: int | None = None) -> RunDetailOut:
    """Everything the run page shows (steps are at most the run's plan)."""
    pipeline, run = state.run(run_id)
    store = pipeline.store
    steps = store.list_steps(run_id)
    mats = {
        (m.asset, m.partition): m
        for m in store.list_materializations(pipeline.name, run_id=run_id, limit=len(steps) + 1)
    }
    audit = state.queries.audit(run_id, after=audit_after, limit=AUDIT_PAGE)
    # a step that waited (approval, gate, deferred scatter) started when it began waiting;
    # its record's started_at is the attempt that finished it
    waited: dict[tuple[str, str], datetime] = {}
    for e in audit if audit_after is None else ():
        if e.kind in _WAITED and e.asset is not None:
            waited.setdefault((e.asset, e.partition or ""), e.at)
    times = [t for m in mats.values() for t in (m.started_at, m.finished_at) if t is not None]
    t0 = min([run.created_at, *times])
    span = max((max([run.updated_at, *times]) - t0).total_seconds(), 1e-6)
    out_steps: list[StepOut] = []
    routes: list[RouteOut] = []
    approvals: list[ApprovalOut] = []
    scatters: list[ScatterOut] = []
    retry: list[StepOut] = []
    for s in steps:
        a = pipeline.dag.assets.get(s.asset)
        m = mats.get((s.asset, s.partition))
        step = _step_out(s.asset, s.partition, asset_kind(a) if a else "asset", s.state,
                         s.attempt, s.error, m, t0, span,
                         waited.get((s.asset, s.partition)))  # fmt: skip
        out_steps.append(step)
        if a is not None and a.is_router:
            branch = store.get_route_decision(run_id, s.asset, s.partition)
            if branch is not None:
                routes.append(RouteOut(router=s.asset, partition=s.partition, branch=branch))
        if s.state == "waiting":
            pending = store.find_approval(run_id, s.asset, s.partition)
            if pending is not None and pending.status == "pending":
                approvals.append(approval_out(pipeline, pending, with_preview=True))
        if a is not None and a.scatter is not None and s.state != "pending":
            progress = scatter_progress(state, run_id, s.asset, s.partition)
            scatters.append(progress)
            if progress.failed and run.status not in ("running", "waiting"):
                retry.append(step)
    return RunDetailOut(
        run=run_out(run), steps=out_steps, routes=routes, approvals=approvals,
        scatters=scatters,
        audit=[AuditOut(id=e.id, at=e.at, kind=e.kind, asset=e.asset, partition=e.partition,
                        detail=dict(e.detail)) for e in audit],
        audit_next=audit[-1].id if len(audit) == AUDIT_PAGE else None,
        can_cancel=run.status in ("running", "waiting"),
        can_resume=run.status in ("failed", "cancelled"),
        retry_items=retry,
    )  # fmt: skip


def _step_out(
    asset: str, partition: str, kind: str, step_state: str, attempt: int, error: str | None,
    m: MaterializationRecord | None, t0: datetime, span: float, waited: datetime | None,
) -> StepOut:
    started = m.started_at if m else None
    if waited is not None and (started is None or waited < started):
        started = waited
    finished = m.finished_at if m else None
    duration = (finished - started).total_seconds() if started and finished else None
    offset = width = 0.0
    if started is not None:
        offset = 100.0 * (started - t0).total_seconds() / span
        if finished is None and step_state in ("running", "waiting"):
            width = 100.0 - offset  # under way: the bar reaches the run's latest update
        else:
            end = finished or started
            width = max(100.0 * (end - started).total_seconds() / span, 0.5)
    traceback = m.metadata.get("traceback") if m else None
    logs = m.metadata.get("logs") if m else None
    return StepOut(
        asset=asset, partition=partition, kind=kind, state=step_state,
        attempt=max(attempt, m.attempt if m else 0), started_at=started, finished_at=finished,
        duration_s=duration, materialization_id=m.id if m else None,
        error=error or (m.error if m else None),
        traceback=traceback if isinstance(traceback, str) else None,
        logs=[str(line) for line in logs] if isinstance(logs, list) else [],
        offset_pct=round(min(offset, 100.0), 2), width_pct=round(min(width, 100.0 - offset), 2),
    )  # fmt: skip


def scatter_progress(state: UIState, run_id: str, asset: str, partition: str) -> ScatterOut:
    """How far a scatter step has got: from its coordinator when it reports progress
    (Celery scatter), else from the item results saved so far (inline scatter)."""
    pipeline, _ = state.run(run_id)
    a = pipeline.dag[asset]
    if a.scatter is None:
        raise UsageError(f"asset {asset!r} is not a scatter asset")
    step = pipeline.store.get_step(run_id, a.name, partition)
    if step is None:
        raise UsageError(f"run {run_id} has no step {asset!r} [{partition}]")
    finished = step.state in TERMINAL_STEP_STATES
    coordinator = pipeline.runtime.scatter_coordinator
    counts = None
    if isinstance(coordinator, ScatterProgress):
        counts = coordinator.progress(pipeline, run_id, a.name, partition)
    if counts is not None:
        total, ok, bad = counts.total, counts.succeeded, counts.failed
        running, pending = counts.running, counts.pending
    else:
        by_state = state.queries.item_counts(run_id, a.name, partition)
        ok, bad = by_state.get("succeeded", 0), by_state.get("failed", 0)
        total = ok + bad if finished else None
        running = pending = 0
    done = ok + bad
    if total is not None and total > 0:
        percent = round(100.0 * done / total, 1)
    else:
        percent = 100.0 if finished else 0.0
    rate = state.rates.observe((run_id, a.name, partition), done)
    eta = None
    if rate and total is not None and total > done:
        eta = round((total - done) / rate, 1)
    return ScatterOut(
        run_id=run_id, asset=a.name, partition=partition, total=total, succeeded=ok,
        failed=bad, running=running, pending=pending, percent=percent,
        rate_per_s=round(rate, 2) if rate else None, eta_s=eta,
        finished=finished,
    )  # fmt: skip


def failed_items(
    state: UIState, run_id: str, asset: str, partition: str, *, after: int | None, limit: int
) -> ItemPageOut:
    """A page of a scatter step's failed items with their errors (saved item results)."""
    pipeline, _ = state.run(run_id)
    name = pipeline.dag[asset].name
    items = state.queries.item_results(run_id, name, partition, state="failed", after=after,
                                       limit=limit)  # fmt: skip
    return ItemPageOut(
        items=[ItemOut(index=i.index, key=i.key, state=i.state, error=i.error) for i in items],
        next_after=items[-1].index if len(items) == max(1, min(limit, 500)) else None,
    )


def running_scatters(state: UIState, *, limit: int = 50) -> list[ScatterOut]:
    """Every scatter under way in the pipelines shown (at most ``limit``), newest runs'
    first as the store lists them."""
    out: list[ScatterOut] = []
    for pipeline in state.pipelines.values():
        for a in pipeline.dag.assets.values():
            if a.scatter is None:
                continue
            for step in state.queries.active_steps(pipeline.name, asset=a.name, limit=limit):
                if step.state in ("running", "waiting") and len(out) < limit:
                    out.append(scatter_progress(state, step.run_id, a.name, step.partition))
    return out
