"""The JSON API under ``/api`` (its OpenAPI document is at ``/openapi.json``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel

from flowstone_ui import actions
from flowstone_ui.app import require, state_of
from flowstone_ui.models import (
    ActionIn,
    ActionOut,
    AssetOut,
    BackfillIn,
    BackfillOut,
    DecisionIn,
    GraphOut,
    GridOut,
    HealthOut,
    InboxOut,
    ItemPageOut,
    PipelineOut,
    RetryItemsIn,
    RunDetailOut,
    RunPageOut,
    ScatterOut,
)
from flowstone_ui.views_assets import asset_detail, asset_graph
from flowstone_ui.views_partitions import partition_grid
from flowstone_ui.views_runs import (
    failed_items,
    list_runs,
    run_detail,
    running_scatters,
    scatter_progress,
)
from flowstone_ui.views_waits import inbox

__all__ = ["router"]


class ErrorOut(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid argument"},
    401: {"model": ErrorOut, "description": "no credentials"},
    403: {"model": ErrorOut, "description": "wrong credentials"},
    404: {"model": ErrorOut, "description": "unknown pipeline, asset or run"},
    503: {"model": ErrorOut, "description": "the run store failed"},
}
_ACTION_ERRORS = {**_ERRORS, 409: {"model": ErrorOut, "description": "not pending"}}


def reader(request: Request) -> None:
    require(request, acting=False)


def actor(request: Request) -> None:
    require(request, acting=True)


router = APIRouter(prefix="/api", responses=_ERRORS, dependencies=[Depends(reader)])
Name = Annotated[str, Path(min_length=1, max_length=128)]
RunId = Annotated[str, Path(min_length=1, max_length=200)]
Limit = Annotated[int, Query(ge=1, le=500)]
Partition = Annotated[str, Query(max_length=4096, description="encoded partition key")]
Cursor = Annotated[str | None, Query(max_length=2048)]
ApprovalId = Annotated[int, Path(ge=1, le=2**62)]


@router.get("/pipelines", response_model=list[PipelineOut])
def pipelines(request: Request) -> list[PipelineOut]:
    """The pipelines this server shows."""
    return [
        PipelineOut(name=p.name, assets=len(p.dag.order), store=p.store.name,
                    executor=type(p.executor).__name__)
        for p in state_of(request).pipelines.values()
    ]  # fmt: skip


@router.get("/health", response_model=list[HealthOut])
def health(request: Request) -> list[HealthOut]:
    """Each pipeline's health check (store, executor (workers), resources)."""
    out = []
    for p in state_of(request).pipelines.values():
        report = json.loads(json.dumps(p.health(), default=str))  # JSON-safe detail
        out.append(HealthOut(pipeline=p.name, ok=bool(report.get("ok")), detail=report))
    return out


@router.get("/runs", response_model=RunPageOut)
def runs(
    request: Request,
    pipeline: Annotated[str | None, Query(max_length=128)] = None,
    status: Literal["running", "waiting", "succeeded", "failed", "cancelled"] | None = None,
    asset: Annotated[str | None, Query(max_length=128)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> RunPageOut:
    """Runs newest first, filtered; pass ``next_cursor`` back as ``cursor`` for more."""
    return list_runs(
        state_of(request), pipeline=pipeline, status=status, asset=asset, since=_aware(since),
        until=_aware(until), cursor=cursor, limit=limit,
    )


def _aware(at: datetime | None) -> datetime | None:
    if at is not None and at.tzinfo is None:
        raise HTTPException(400, "since/until need a timezone, e.g. 2026-01-01T00:00:00Z")
    return at


@router.get("/runs/{run_id}", response_model=RunDetailOut)
def run(
    request: Request, run_id: RunId, audit_after: Annotated[int | None, Query(ge=0)] = None
) -> RunDetailOut:
    """One run: steps (timeline, attempts, errors), route decisions, waits, audit trail."""
    return run_detail(state_of(request), run_id, audit_after=audit_after)


@router.get("/scatters", response_model=list[ScatterOut])
def scatters(request: Request, limit: Limit = 50) -> list[ScatterOut]:
    """Every scatter under way, with its progress."""
    return running_scatters(state_of(request), limit=limit)


@router.get("/runs/{run_id}/scatter/{asset}", response_model=ScatterOut)
def scatter(request: Request, run_id: RunId, asset: Name, partition: Partition = "") -> ScatterOut:
    """Progress of one scatter step: counts, rate and ETA."""
    return scatter_progress(state_of(request), run_id, asset, partition)


@router.get("/runs/{run_id}/scatter/{asset}/failed", response_model=ItemPageOut)
def scatter_failed(
    request: Request, run_id: RunId, asset: Name, partition: Partition = "",
    after: Annotated[int | None, Query(ge=-1)] = None, limit: Limit = 50,
) -> ItemPageOut:
    """A page of a scatter step's failed items and their errors."""
    return failed_items(state_of(request), run_id, asset, partition, after=after, limit=limit)


@router.get("/pipelines/{pipeline}/graph", response_model=GraphOut)
def graph(request: Request, pipeline: Name) -> GraphOut:
    """The asset graph, laid out, each asset with its latest state."""
    return asset_graph(state_of(request), pipeline)


@router.get("/pipelines/{pipeline}/assets/{asset}", response_model=AssetOut)
def asset(
    request: Request, pipeline: Name, asset: Name, cursor: Cursor = None, limit: Limit = 20,
    materialization: Annotated[str | None, Query(max_length=200)] = None,
) -> AssetOut:
    """An asset's materializations (paged), lineage and a bounded value preview."""
    return asset_detail(state_of(request), pipeline, asset, cursor=cursor, limit=limit,
                        materialization=materialization)  # fmt: skip


@router.get("/pipelines/{pipeline}/assets/{asset}/partitions", response_model=GridOut)
def partitions(
    request: Request, pipeline: Name, asset: Name,
    start: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    group: Annotated[int, Query(ge=1, le=5000)] = 1,
    after: Annotated[str | None, Query(max_length=4096)] = None,
    row_dim: Annotated[str | None, Query(max_length=128)] = None,
    col_dim: Annotated[str | None, Query(max_length=128)] = None,
    col_start: Annotated[int, Query(ge=0, le=10**9)] = 0,
    col_limit: Annotated[int, Query(ge=1, le=50)] = 24,
    fixed: Annotated[list[str] | None, Query(max_length=20, description="DIM=KEY")] = None,
) -> GridOut:
    """One page of the partition health grid (see the partitions page)."""
    pinned: dict[str, str] = {}
    for item in fixed or []:
        dim, sep, key = item.partition("=")
        if not sep or not dim:
            raise HTTPException(400, f"fixed={item!r}: use DIMENSION=KEY")
        pinned[dim] = key
    return partition_grid(state_of(request), pipeline, asset, start=start, limit=limit,
                          group=group, after=after, row_dim=row_dim, col_dim=col_dim,
                          fixed=pinned, col_start=col_start, col_limit=col_limit)  # fmt: skip


@router.get("/pipelines/{pipeline}/assets/{asset}/backfills", response_model=list[BackfillOut])
def backfills(request: Request, pipeline: Name, asset: Name) -> list[BackfillOut]:
    """The backfills of this asset started from this server, newest first."""
    state = state_of(request)
    return state.backfills.list(state.pipeline(pipeline).name, asset)


@router.get("/backfills/{backfill_id}", response_model=BackfillOut)
def backfill(
    request: Request, backfill_id: Annotated[str, Path(max_length=64)]
) -> BackfillOut:
    """One backfill's progress."""
    found = state_of(request).backfills.get(backfill_id)
    if found is None:
        raise HTTPException(404, f"no backfill {backfill_id!r} started from this server")
    return found


@router.get("/waits", response_model=InboxOut)
def waits(
    request: Request, pipeline: Annotated[str | None, Query(max_length=128)] = None,
    after: Annotated[int | None, Query(ge=0)] = None, gates_cursor: Cursor = None,
    limit: Limit = 50,
) -> InboxOut:
    """Pending approvals and signal gates, oldest first."""
    return inbox(state_of(request), pipeline=pipeline, after=after, gates_cursor=gates_cursor,
                 limit=limit)  # fmt: skip


# --- actions: need the token (and, with the session cookie, the CSRF header) ------------------
_ACT: dict[str, Any] = {"dependencies": [Depends(actor)], "responses": _ACTION_ERRORS}


@router.post("/approvals/{approval_id}/approve", response_model=ActionOut, **_ACT)
def approve(request: Request, approval_id: ApprovalId, body: DecisionIn) -> ActionOut:
    """Approve a pending approval and resume its run."""
    return actions.decide(state_of(request), approval_id, approve=True, by=body.by, reason=None)


@router.post("/approvals/{approval_id}/reject", response_model=ActionOut, **_ACT)
def reject(request: Request, approval_id: ApprovalId, body: DecisionIn) -> ActionOut:
    """Reject a pending approval: its asset fails."""
    return actions.decide(state_of(request), approval_id, approve=False, by=body.by,
                          reason=body.reason)  # fmt: skip


@router.post("/runs/{run_id}/cancel", response_model=ActionOut, **_ACT)
def cancel(request: Request, run_id: RunId, body: ActionIn) -> ActionOut:
    """Cancel a running or waiting run."""
    return actions.cancel(state_of(request), run_id, by=body.by)


@router.post("/runs/{run_id}/resume", response_model=ActionOut, **_ACT)
def resume(request: Request, run_id: RunId, body: ActionIn) -> ActionOut:
    """Run a failed or cancelled run's unfinished steps again."""
    return actions.resume(state_of(request), run_id, by=body.by)


@router.post("/runs/{run_id}/retry-failed-items", response_model=ActionOut, **_ACT)
def retry_failed_items(request: Request, run_id: RunId, body: RetryItemsIn) -> ActionOut:
    """Re-run only the failed items of a scatter step (a new run)."""
    return actions.retry_items(state_of(request), run_id, body.asset, body.partition, by=body.by)


@router.post("/pipelines/{pipeline}/assets/{asset}/backfills", response_model=BackfillOut,
             **_ACT)  # fmt: skip
def start_backfill(request: Request, pipeline: Name, asset: Name, body: BackfillIn) -> BackfillOut:
    """Backfill the asset for a range of partitions; poll ``/api/backfills/{id}``."""
    return actions.backfill(state_of(request), pipeline, asset, start=body.start, end=body.end,
                            parallel=body.parallel, by=body.by)  # fmt: skip
