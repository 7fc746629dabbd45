"""The shape of an IO-manager value table (the packaged one and user-named ones)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PREFETCH_PREFIX", "StagedWrite", "asset_values_ddl"]


@dataclass(frozen=True, slots=True)
class StagedWrite:
    """The payload of a value a ``PostgresIOManager`` staged
    (:attr:`flowstone.records.StagedValue.payload`): its upsert, with named ``:params``,
    which a ``PostgresRunStore`` on the same database runs inside ``finish_step``."""

    statement: str
    params: Mapping[str, Any]

PREFETCH_PREFIX = "flowstone-io-postgres:"
"""How a ``PostgresIOManager.prefetch_source`` starts (then ``schema.table``): the tables
a ``PostgresRunStore`` reads a continuation's input values from."""


def asset_values_ddl(table_sql: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a value table; ``table_sql`` is already quoted.

    ``value_json`` uses the ``json`` type (not ``jsonb``) on purpose: ``json`` keeps the
    codec's text verbatim (key order, number spelling), so values round-trip exactly, while
    still being queryable with ``->``/``->>`` and castable to ``jsonb``.
    """
    return f"""
CREATE TABLE IF NOT EXISTS {table_sql} (
    location   text PRIMARY KEY,
    pipeline   text NOT NULL,
    asset      text NOT NULL,
    partition  text NOT NULL,
    run_id     text NOT NULL,
    item       integer,
    format     text NOT NULL,
    value_json json,
    data       bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((value_json IS NULL) <> (data IS NULL))
)
"""
