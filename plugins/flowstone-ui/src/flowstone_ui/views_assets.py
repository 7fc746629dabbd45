"""Assets: the graph coloured by latest state, and one asset's records, lineage and value."""

from __future__ import annotations

from flowstone.errors import FlowStoneError, UsageError
from flowstone.pipeline import Pipeline
from flowstone.records import MaterializationRecord
from flowstone_ui.graph import asset_kind, layout
from flowstone_ui.models import (
    AssetOut,
    EdgeOut,
    GraphOut,
    LineageOut,
    LineageRef,
    MaterializationOut,
    NodeOut,
    PreviewOut,
)
from flowstone_ui.preview import preview
from flowstone_ui.state import UIState

__all__ = ["LINEAGE_LIMIT", "asset_detail", "asset_graph", "materialization_out"]

LINEAGE_LIMIT = 50
"""Downstream records shown per materialization (a value may feed thousands)."""


def asset_graph(state: UIState, pipeline_name: str) -> GraphOut:
    """The pipeline's DAG laid out, each asset coloured by its newest record, or ``running``
    when one of its steps is under way now."""
    pipeline = state.pipeline(pipeline_name)
    names = list(pipeline.dag.order)
    latest = state.queries.latest_materializations(pipeline.name, names)
    states: dict[str, str] = {name: m.state for name, m in latest.items()}
    for step in state.queries.active_steps(pipeline.name, limit=200):
        if step.asset in pipeline.dag:
            states[step.asset] = "waiting" if step.state == "waiting" else "running"
    g = layout(pipeline.dag, states)
    return GraphOut(
        pipeline=pipeline.name, width=g.width, height=g.height,
        nodes=[NodeOut(name=n.name, kind=n.kind, layer=n.layer, x=n.x, y=n.y,
                       partitioned=n.partitioned, state=n.state) for n in g.nodes],
        edges=[EdgeOut(source=e.source, target=e.target, label=e.label, path=e.path)
               for e in g.edges],
    )  # fmt: skip


def materialization_out(m: MaterializationRecord) -> MaterializationOut:
    duration = None
    if m.started_at is not None and m.finished_at is not None:
        duration = (m.finished_at - m.started_at).total_seconds()
    return MaterializationOut(
        id=m.id, run_id=m.run_id, partition=m.partition, state=m.state, attempt=m.attempt,
        started_at=m.started_at, finished_at=m.finished_at, duration_s=duration, error=m.error,
        invalidated=m.invalidated, upstream=list(m.upstream),
    )  # fmt: skip


def _ref(m: MaterializationRecord) -> LineageRef:
    return LineageRef(id=m.id, asset=m.asset, partition=m.partition, run_id=m.run_id,
                      state=m.state)  # fmt: skip


def asset_detail(
    state: UIState, pipeline_name: str, asset: str, *, cursor: str | None, limit: int,
    materialization: str | None,
) -> AssetOut:
    """One asset: a page of its records, and for ``materialization`` (default: the newest
    on the first page) its lineage and a bounded preview of its value.

    Raises:
        UsageError: the materialization is not one of this asset's.
    """
    pipeline = state.pipeline(pipeline_name)
    a = pipeline.dag[asset]
    page, nxt = state.queries.materializations(pipeline.name, a.name, cursor=cursor, limit=limit)
    chosen: MaterializationRecord | None = None
    if materialization is not None:
        chosen = pipeline.store.get_materialization(materialization)
        if chosen is None or chosen.asset != a.name or chosen.pipeline != pipeline.name:
            raise UsageError(f"no materialization {materialization!r} of asset {a.name!r}")
    elif cursor is None and page:
        chosen = page[0]
    lineage = value = None
    if chosen is not None:
        lineage = _lineage(pipeline, chosen)
        value = _value(pipeline, chosen)
    return AssetOut(
        pipeline=pipeline.name, name=a.name, kind=asset_kind(a),
        partitioned=a.partitions is not None, description=a.description,
        deps=list(a.upstream),
        dependents=[n for n in pipeline.dag.order if a.name in pipeline.dag.assets[n].upstream],
        materializations=[materialization_out(m) for m in page], next_cursor=nxt,
        lineage=lineage, preview=value,
    )  # fmt: skip


def _lineage(pipeline: Pipeline, m: MaterializationRecord) -> LineageOut:
    down = pipeline.store.downstream(m.id)
    return LineageOut(
        materialization_id=m.id,
        upstream=[_ref(u) for u in pipeline.store.upstream(m.id)],
        downstream=[_ref(d) for d in down[:LINEAGE_LIMIT]],
        downstream_truncated=len(down) > LINEAGE_LIMIT,
    )


def _value(pipeline: Pipeline, m: MaterializationRecord) -> PreviewOut | None:
    if m.state != "succeeded" or m.location is None:
        return None
    try:
        value = pipeline.load_materialization(m)
    except FlowStoneError as exc:
        return PreviewOut(type="error", text=str(exc), truncated=False)
    kind, text, cut = preview(value)
    return PreviewOut(type=kind, text=text, truncated=cut)
