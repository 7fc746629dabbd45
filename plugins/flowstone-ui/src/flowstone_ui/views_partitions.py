"""The partition health grid: a page of an asset's partitions at a time, optionally
aggregated (``group`` consecutive partitions per cell), so 100,000 partitions are browsed
a few thousand at a time and never loaded at once.

A multi-partitioned asset is shown by two chosen dimensions (rows x columns), the other
dimensions fixed to one key each. An asset without a declared set (dynamic partitions) is
paged through the partitions its records name.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from flowstone.errors import UsageError
from flowstone.partitions import MultiPartitions, PartitionKey, PartitionSet, encode_partition
from flowstone_ui.models import CellOut, GridOut
from flowstone_ui.state import UIState

__all__ = ["MAX_CELLS", "MAX_KEYS", "partition_grid"]

MAX_KEYS = 5000
"""Partitions one grid page reads."""
MAX_CELLS = 500
"""Cells one grid page draws (``group`` grows to fit)."""
_WORST = ("failed", "running", "missing", "skipped", "succeeded")


def _states(state: UIState, pipeline: str, asset: str, keys: Sequence[str]) -> list[str]:
    found = state.queries.partition_states(pipeline, asset, keys)
    steps = state.queries.active_steps(pipeline, asset=asset, partitions=keys, limit=MAX_KEYS)
    active = {s.partition for s in steps}
    out = []
    for k in keys:
        if k in active:
            out.append("running")
            continue
        s = found.get(k)
        out.append("missing" if s is None else "running" if s in ("running", "waiting") else s)
    return out


def _cells(keys: Sequence[str], states: Sequence[str], group: int) -> list[CellOut]:
    cells = []
    for i in range(0, len(keys), group):
        part = states[i : i + group]
        counts = {s: part.count(s) for s in _WORST if s in part}
        worst = next(s for s in _WORST if s in counts)
        first, last = keys[i], keys[min(i + group, len(keys)) - 1]
        label = first if first == last else f"{first} .. {last}"
        cells.append(CellOut(label=label, first=first, last=last, state=worst, counts=counts))
    return cells


def _summary(states: Sequence[str]) -> dict[str, int]:
    return {s: states.count(s) for s in _WORST if s in states}


def partition_grid(
    state: UIState, pipeline_name: str, asset: str, *, start: int = 0, limit: int = 1000,
    group: int = 1, after: str | None = None, row_dim: str | None = None,
    col_dim: str | None = None, fixed: Mapping[str, str] | None = None, col_start: int = 0,
    col_limit: int = 24,
) -> GridOut:
    """One page of the grid (see the module docstring).

    Raises:
        UsageError: the asset is not partitioned, or a dimension or key is not valid.
    """
    pipeline = state.pipeline(pipeline_name)
    a = pipeline.dag[asset]
    parts = a.partitions
    if start < 0 or col_start < 0:
        raise UsageError("start and col_start must be >= 0")
    if isinstance(parts, MultiPartitions) and len(parts.dimensions) >= 2:
        return _multi(state, pipeline.name, a.name, parts, start=start, rows=limit,
                      row_dim=row_dim, col_dim=col_dim, fixed=fixed or {},
                      col_start=col_start, cols=col_limit)  # fmt: skip
    if parts is None:
        keys = state.queries.known_partitions(pipeline.name, a.name, after=after,
                                              limit=min(limit, MAX_CELLS))  # fmt: skip
        states = _states(state, pipeline.name, a.name, keys)
        return GridOut(
            pipeline=pipeline.name, asset=a.name, mode="dynamic", total=None, limit=limit,
            cells=_cells(keys, states, 1), summary=_summary(states),
            next_after=keys[-1] if len(keys) == min(limit, MAX_CELLS) and keys else None,
        )  # fmt: skip
    _, encoded = state.keys.keys(parts)
    limit = max(1, min(limit, MAX_KEYS))
    page = encoded[start : start + limit]
    group = max(1, group, -(-len(page) // MAX_CELLS))
    states = _states(state, pipeline.name, a.name, page)
    return GridOut(
        pipeline=pipeline.name, asset=a.name, mode="keys", total=len(encoded), start=start,
        limit=limit, group=group, cells=_cells(page, states, group), summary=_summary(states),
        next_start=start + limit if start + limit < len(encoded) else None,
        prev_start=max(0, start - limit) if start > 0 else None,
    )  # fmt: skip


def _multi(
    state: UIState, pipeline: str, asset: str, parts: MultiPartitions, *, start: int,
    rows: int, row_dim: str | None, col_dim: str | None, fixed: Mapping[str, str],
    col_start: int, cols: int,
) -> GridOut:
    dims = dict(parts.dimensions)
    names = list(parts.dimension_names)
    row_dim = row_dim or names[0]
    col_dim = col_dim or next(n for n in names if n != row_dim)
    for d in (row_dim, col_dim, *fixed):
        if d not in dims:
            raise UsageError(f"asset {asset!r} has no dimension {d!r}; it has {', '.join(names)}")
    if row_dim == col_dim:
        raise UsageError("choose two different dimensions for rows and columns")
    rows = max(1, min(rows, 100))
    cols = max(1, min(cols, 50))
    row_keys, row_enc = state.keys.keys(dims[row_dim])
    col_keys, col_enc = state.keys.keys(dims[col_dim])
    pinned: dict[str, PartitionKey] = {}
    for d in names:
        if d in (row_dim, col_dim):
            continue
        pinned[d] = _pick(dims[d], fixed.get(d), state, d)
    r_page = list(range(start, min(start + rows, len(row_keys))))
    c_page = list(range(col_start, min(col_start + cols, len(col_keys))))
    encoded = []
    for ri, ci in itertools.product(r_page, c_page):
        chosen = {**pinned, row_dim: row_keys[ri], col_dim: col_keys[ci]}
        encoded.append(encode_partition(tuple(chosen[d] for d in names)))
    states = _states(state, pipeline, asset, encoded)
    return GridOut(
        pipeline=pipeline, asset=asset, mode="multi", total=len(row_keys), start=start,
        limit=rows, cells=_cells(encoded, states, 1), summary=_summary(states),
        next_start=start + rows if start + rows < len(row_keys) else None,
        prev_start=max(0, start - rows) if start > 0 else None,
        dimensions=names, row_dim=row_dim, col_dim=col_dim,
        rows=[row_enc[i] for i in r_page], cols=[col_enc[i] for i in c_page],
        fixed={d: encode_partition(k) for d, k in pinned.items()},
        col_start=col_start, col_total=len(col_keys),
        next_col_start=col_start + cols if col_start + cols < len(col_keys) else None,
        prev_col_start=max(0, col_start - cols) if col_start > 0 else None,
    )  # fmt: skip


def _pick(parts: PartitionSet, text: str | None, state: UIState, dim: str) -> PartitionKey:
    if text is None or text == "":
        keys, _ = state.keys.keys(parts)
        if not keys:
            raise UsageError(f"dimension {dim!r} has no keys")
        return keys[0]
    try:
        return parts.parse(text)
    except Exception as exc:
        raise UsageError(f"{text!r} is not a key of dimension {dim!r}: {exc}") from exc
