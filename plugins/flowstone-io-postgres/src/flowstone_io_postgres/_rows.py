"""Turn result rows into the frozen records of :mod:`flowstone.records`."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg

from flowstone.records import (
    Approval,
    AuditEntry,
    Gate,
    ItemResult,
    MaterializationRecord,
    RunRecord,
    StepRecord,
)
from flowstone_io_postgres._sql import load_json

__all__ = [
    "APPROVAL_COLS",
    "GATE_COLS",
    "MAT_COLS",
    "MAT_COLS_AS_M",
    "RUN_COLS",
    "STEP_COLS",
    "STEP_COL_COUNT",
    "to_approval",
    "to_audit",
    "to_gate",
    "to_item",
    "to_materialization",
    "to_prefixed_materialization",
    "to_run",
    "to_step",
]

RUN_COLS = "run_id, pipeline, targets, partition, status, created_at, updated_at, error, tags"
STEP_COLS = (
    "run_id, asset, partition, state, remaining_deps, attempt, owner, lease_expires_at, "
    "not_before, materialization_id, error, updated_at"
)
STEP_COL_COUNT = len(STEP_COLS.split(","))
MAT_COLS = (
    "id, pipeline, run_id, asset, partition, state, io_manager, location, attempt, "
    "started_at, finished_at, error, upstream, metadata, invalidated"
)
_MAT_NAMES = [c.strip() for c in MAT_COLS.split(",")]
MAT_COLS_AS_M = ", ".join(f"m.{c} AS m_{c}" for c in _MAT_NAMES)
"""The materialization columns of a join aliased ``m``, each renamed ``m_<column>``."""
APPROVAL_COLS = (
    "id, pipeline, run_id, asset, partition, message, status, created_at, expires_at, "
    "io_manager, location, decided_by, decided_at, reason, metadata"
)
GATE_COLS = (
    "token_hash, pipeline, run_id, asset, partition, status, created_at, expires_at, "
    "payload, signaled_at, metadata"
)


def _m(row: asyncpg.Record) -> dict[str, Any]:
    return dict(row.items())


def to_run(row: asyncpg.Record) -> RunRecord:
    d = _m(row)
    d["targets"] = tuple(d["targets"])
    d["tags"] = load_json(d["tags"])
    return RunRecord(**d)


_STEP_NAMES = tuple(c.strip() for c in STEP_COLS.split(","))
# to_step builds records positionally: the column list must follow the record's fields
# (those after them, reported by a claim, are not columns)
assert tuple(f.name for f in dataclasses.fields(StepRecord))[: len(_STEP_NAMES)] == _STEP_NAMES


def to_step(row: asyncpg.Record, *, limit: int | None = None) -> StepRecord:
    """A step from ``row``: one selected with ``STEP_COLS`` first (``limit`` says how many
    columns are the step's when it has more), or a whole ``steps`` composite."""
    if limit is not None or len(row) == STEP_COL_COUNT:
        return StepRecord(*(row[i] for i in range(STEP_COL_COUNT)))  # STEP_COLS order
    d = {name: row[name] for name in _STEP_NAMES}  # a composite also has ``ordinal``
    return StepRecord(**d)


def to_materialization(row: asyncpg.Record) -> MaterializationRecord:
    d = _m(row)
    d.pop("seq", None)  # present when the row is a whole ``materializations`` composite
    d["upstream"] = tuple(d["upstream"])
    d["metadata"] = load_json(d["metadata"])
    return MaterializationRecord(**d)


def to_prefixed_materialization(row: asyncpg.Record) -> MaterializationRecord | None:
    """The ``m_``-prefixed materialization columns of ``row`` (see ``MAT_COLS_AS_M``), or
    None when the join found no record."""
    if row["m_id"] is None:
        return None
    d = {c: row[f"m_{c}"] for c in _MAT_NAMES}
    d["upstream"] = tuple(d["upstream"])
    d["metadata"] = load_json(d["metadata"])
    return MaterializationRecord(**d)


def to_approval(row: asyncpg.Record) -> Approval:
    d = _m(row)
    d["metadata"] = load_json(d["metadata"])
    return Approval(**d)


def to_gate(row: asyncpg.Record) -> Gate:
    d = _m(row)
    d["metadata"] = load_json(d["metadata"])
    d["payload"] = None if d["payload"] is None else load_json(d["payload"])
    return Gate(**d)


def to_audit(row: asyncpg.Record) -> AuditEntry:
    d = _m(row)
    d["detail"] = load_json(d["detail"])
    return AuditEntry(**d)


def to_item(row: asyncpg.Record) -> ItemResult:
    return ItemResult(**_m(row))
