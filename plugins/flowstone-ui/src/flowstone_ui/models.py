"""The JSON API's response and request models (pydantic); FastAPI derives the OpenAPI
document from them, and the HTML pages render the same objects."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActionIn",
    "ActionOut",
    "ApprovalOut",
    "AssetOut",
    "AuditOut",
    "BackfillIn",
    "BackfillOut",
    "CellOut",
    "DecisionIn",
    "EdgeOut",
    "GateOut",
    "GraphOut",
    "GridOut",
    "HealthOut",
    "InboxOut",
    "ItemOut",
    "ItemPageOut",
    "LineageOut",
    "LineageRef",
    "MaterializationOut",
    "NodeOut",
    "PipelineOut",
    "PreviewOut",
    "RetryItemsIn",
    "RouteOut",
    "RunDetailOut",
    "RunOut",
    "RunPageOut",
    "ScatterOut",
    "StepOut",
]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class HealthOut(_Out):
    pipeline: str
    ok: bool
    detail: dict[str, Any] = Field(description="store, executor and resources checks")


class PipelineOut(_Out):
    name: str
    assets: int
    store: str
    executor: str


class RunOut(_Out):
    run_id: str
    pipeline: str
    targets: list[str]
    partition: str
    status: str
    created_at: datetime
    updated_at: datetime
    error: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class RunPageOut(_Out):
    runs: list[RunOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page")


class StepOut(_Out):
    asset: str
    partition: str
    kind: str
    state: str
    attempt: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    materialization_id: str | None = None
    error: str | None = None
    traceback: str | None = None
    logs: list[str] = Field(default_factory=list, description="the step's context.log lines")
    offset_pct: float = Field(0.0, description="timeline bar start, % of the run's span")
    width_pct: float = Field(0.0, description="timeline bar width, % of the run's span")


class RouteOut(_Out):
    router: str
    partition: str
    branch: str


class AuditOut(_Out):
    id: int
    at: datetime
    kind: str
    asset: str | None = None
    partition: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class PreviewOut(_Out):
    type: str
    text: str
    truncated: bool


class ApprovalOut(_Out):
    id: int
    pipeline: str
    run_id: str
    asset: str
    partition: str
    message: str
    status: str
    created_at: datetime
    expires_at: datetime | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    preview: PreviewOut | None = None


class GateOut(_Out):
    pipeline: str
    run_id: str
    asset: str
    partition: str
    created_at: datetime
    expires_at: datetime | None = None


class InboxOut(_Out):
    approvals: list[ApprovalOut]
    next_after: int | None = Field(None, description="pass as ?after= for more approvals")
    gates: list[GateOut]
    gates_cursor: str | None = Field(None, description="pass as ?gates_cursor= for more gates")


class ScatterOut(_Out):
    run_id: str
    asset: str
    partition: str
    total: int | None = None
    succeeded: int
    failed: int
    running: int
    pending: int
    percent: float
    rate_per_s: float | None = None
    eta_s: float | None = None
    finished: bool


class ItemOut(_Out):
    index: int
    key: str
    state: str
    error: str | None = None


class ItemPageOut(_Out):
    items: list[ItemOut]
    next_after: int | None = None


class RunDetailOut(_Out):
    run: RunOut
    steps: list[StepOut]
    routes: list[RouteOut]
    approvals: list[ApprovalOut]
    scatters: list[ScatterOut]
    audit: list[AuditOut]
    audit_next: int | None = Field(None, description="pass as ?audit_after= for more entries")
    can_cancel: bool
    can_resume: bool
    retry_items: list[StepOut] = Field(default_factory=list)


class NodeOut(_Out):
    name: str
    kind: str
    layer: int
    x: int
    y: int
    partitioned: bool
    state: str | None = None


class EdgeOut(_Out):
    source: str
    target: str
    label: str
    path: str


class GraphOut(_Out):
    pipeline: str
    width: int
    height: int
    nodes: list[NodeOut]
    edges: list[EdgeOut]


class MaterializationOut(_Out):
    id: str
    run_id: str
    partition: str
    state: str
    attempt: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = None
    invalidated: bool = False
    upstream: list[str] = Field(default_factory=list)


class LineageRef(_Out):
    id: str
    asset: str
    partition: str
    run_id: str
    state: str


class LineageOut(_Out):
    materialization_id: str
    upstream: list[LineageRef]
    downstream: list[LineageRef]
    downstream_truncated: bool = False


class AssetOut(_Out):
    pipeline: str
    name: str
    kind: str
    partitioned: bool
    description: str | None = None
    deps: list[str]
    dependents: list[str]
    materializations: list[MaterializationOut]
    next_cursor: str | None = None
    lineage: LineageOut | None = None
    preview: PreviewOut | None = None


class CellOut(_Out):
    label: str
    first: str = Field(description="encoded key of the cell's first partition")
    last: str
    state: str
    counts: dict[str, int]


class GridOut(_Out):
    pipeline: str
    asset: str
    mode: Literal["keys", "multi", "dynamic"]
    total: int | None = Field(None, description="partitions in the set (None: dynamic)")
    start: int = 0
    limit: int
    group: int = 1
    cells: list[CellOut]
    summary: dict[str, int]
    next_start: int | None = None
    prev_start: int | None = None
    next_after: str | None = None
    dimensions: list[str] = Field(default_factory=list)
    row_dim: str | None = None
    col_dim: str | None = None
    rows: list[str] = Field(default_factory=list)
    cols: list[str] = Field(default_factory=list)
    col_start: int = 0
    col_total: int | None = None
    next_col_start: int | None = None
    prev_col_start: int | None = None
    fixed: dict[str, str] = Field(default_factory=dict)


class BackfillOut(_Out):
    id: str
    pipeline: str
    asset: str
    start: str
    end: str
    total: int
    done: int
    succeeded: int
    failed: int
    skipped: int
    state: Literal["running", "finished", "failed"]
    error: str | None = None
    percent: float
    started_at: datetime


class ActionOut(_Out):
    ok: bool
    message: str
    run_id: str | None = None
    status: str | None = None


class ActionIn(BaseModel):
    by: str = Field(min_length=1, max_length=100, description="who acts (kept in the audit log)")


class DecisionIn(ActionIn):
    reason: str | None = Field(None, max_length=2000)


class RetryItemsIn(ActionIn):
    asset: str = Field(min_length=1, max_length=128)
    partition: str = Field("", max_length=4096, description="encoded partition key")


class BackfillIn(ActionIn):
    start: str = Field(min_length=1, max_length=200, description="first partition (as typed)")
    end: str = Field(min_length=1, max_length=200, description="last partition, inclusive")
    parallel: int = Field(4, ge=1, le=32)
