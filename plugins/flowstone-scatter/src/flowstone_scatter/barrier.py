"""The barrier in Postgres: one row per scatter step, one row per item.

Every function here runs inside one transaction on one connection, against the tables in
the run store's schema (``t``, see :class:`~flowstone_scatter.schema.Tables`). The accounting
rules:

* Items are recorded with one ``UPDATE ... FROM unnest(...) WHERE state = 'queued'`` per
  chunk: only rows that actually change are counted, so a redelivered or duplicated chunk
  never counts an item twice.
* The barrier row is touched once per *chunk* (``succeeded``/``failed``/``inflight``
  increments plus the window top-up), never once per item; with chunks of ~100 items a
  hot row at ~3k updates/s accounts for ~300k items/s.
* The transition out of ``running`` is a conditional ``UPDATE ... WHERE state =
  'running'`` made while holding the row lock, so exactly one transaction wins it, and it
  takes the finishing claim (``finisher``, ``finish_expires``) in the same statement.
* Items carry a claim (``claimed_by``, ``claimed_at``): a chunk runs only items that no
  live runner holds, so a duplicated or re-sent message never runs a claimed item twice,
  and recovery tells a lost message (queued, never claimed) from a dead runner (claimed,
  claim older than a lease). Every time is the database's ``now()``; leases are passed as
  durations.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from flowstone.scatter import Scatter
from flowstone_scatter.schema import Tables

__all__ = [
    "Claim",
    "ItemRow",
    "append_page",
    "claim_reader",
    "copy_succeeded",
    "create",
    "decide",
    "find",
    "load_chunk",
    "record",
    "reopen",
    "unit_ranges",
]

_MIN_SAMPLE = 100  # a share threshold over an unknown total is judged after this many items


@dataclass(frozen=True, slots=True)
class ItemRow:
    """One item to run: its index, unit (batch number), key and encoded payload."""

    idx: int
    unit: int
    key: str
    item: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Claim:
    """What a transaction decided: unit ranges to enqueue, and whether it won the finish
    (then ``finisher`` is the token of the finishing claim it took)."""

    ranges: tuple[tuple[int, int], ...] = ()
    finishing: bool = False
    finisher: str | None = None


def unit_ranges(units: Sequence[int], chunk_units: int) -> tuple[tuple[int, int], ...]:
    """Contiguous ``[start, end)`` runs of ``units``, each at most ``chunk_units`` long."""
    out: list[tuple[int, int]] = []
    for u in sorted(set(units)):
        if out and out[-1][1] == u and u - out[-1][0] < chunk_units:
            out[-1] = (out[-1][0], u + 1)
        else:
            out.append((u, u + 1))
    return tuple(out)


async def find(
    conn: asyncpg.Connection, t: Tables, run_id: str, asset: str, partition: str
) -> Any:
    return await conn.fetchrow(
        f"SELECT * FROM {t.barriers} WHERE run_id = $1 AND asset = $2 AND partition = $3",
        run_id, asset, partition,
    )


async def create(
    conn: asyncpg.Connection, t: Tables, *, pipeline: str, run_id: str, asset: str,
    partition: str, token: str, rows: Sequence[tuple[int, int, str, str]], units_total: int,
    max_concurrent: int, chunk_units: int, reader_done: bool, expected_total: int | None,
    previous_run_id: str | None = None,
) -> tuple[int, bool]:
    """Create the barrier and bulk-insert (COPY) its items in ONE transaction.

    With ``previous_run_id`` (a ``retry_failed_items`` run) the items that succeeded in
    that run's barrier of the same asset and partition are recorded succeeded, with their
    results, in the same transaction: only the others are ever enqueued. Returns
    ``(barrier_id, created)``; ``created`` is False if it already existed."""
    async with conn.transaction():
        reuse_from = None
        if previous_run_id is not None:
            reuse_from = await conn.fetchval(
                f"SELECT id FROM {t.barriers} WHERE run_id = $1 AND asset = $2 AND partition = $3",
                previous_run_id, asset, partition,
            )
        bid = await conn.fetchval(
            f"INSERT INTO {t.barriers} (pipeline, run_id, asset, partition, token, state, "
            "expected_total, total_items, units_total, max_concurrent, chunk_units, "
            "reader_done, reuse_from) VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, "
            "$9, $10, $11, $12) ON CONFLICT (run_id, asset, partition) DO NOTHING "
            "RETURNING id",
            pipeline, run_id, asset, partition, token, expected_total, len(rows),
            units_total, max_concurrent, chunk_units, reader_done, reuse_from,
        )
        if bid is None:
            row = await find(conn, t, run_id, asset, partition)
            return int(row["id"]), False
        if rows:
            await conn.copy_records_to_table(
                "scatter_items", schema_name=t.schema,
                columns=["barrier_id", "idx", "unit", "key", "item"],
                records=[(bid, *r) for r in rows],
            )
            if reuse_from is not None:
                reused = await copy_succeeded(conn, t, bid, int(reuse_from), None)
                await conn.execute(
                    f"UPDATE {t.barriers} SET succeeded = $2 WHERE id = $1", bid, reused)
        return int(bid), True


async def copy_succeeded(
    conn: asyncpg.Connection, t: Tables, barrier_id: int, reuse_from: int,
    idx: Sequence[int] | None,
) -> int:
    """Mark this barrier's pending items (all, or those in ``idx``) that succeeded in
    barrier ``reuse_from`` (matched by key) succeeded with the same result; return how many."""
    only = "" if idx is None else " AND n.idx = ANY($3::bigint[])"
    args: list[Any] = [barrier_id, reuse_from] + ([] if idx is None else [list(idx)])
    changed = await conn.fetch(
        f"UPDATE {t.items} AS n SET state = 'succeeded', result = o.result, error = NULL "
        f"FROM {t.items} AS o WHERE n.barrier_id = $1 AND o.barrier_id = $2 "
        "AND o.state = 'succeeded' AND md5(o.key) = md5(n.key) AND o.key = n.key "
        f"AND n.state = 'pending'{only} RETURNING n.idx", *args,
    )
    return len(changed)


async def reopen(conn: asyncpg.Connection, t: Tables, barrier_id: int, token: str) -> None:
    """Re-run only the failed (and never-finished) items of a finished barrier."""
    async with conn.transaction():
        await conn.fetchrow(f"SELECT id FROM {t.barriers} WHERE id = $1 FOR UPDATE", barrier_id)
        reset = await conn.fetch(
            f"UPDATE {t.items} SET state = 'pending', error = NULL, queued_at = NULL, "
            "claimed_at = NULL, claimed_by = NULL "
            "WHERE barrier_id = $1 AND state IN ('failed', 'queued') RETURNING state",
            barrier_id,
        )
        low = await conn.fetchval(
            f"SELECT min(unit) FROM {t.items} WHERE barrier_id = $1 AND state = 'pending'",
            barrier_id,
        )
        failed = await conn.fetchval(
            f"SELECT count(*) FROM {t.items} WHERE barrier_id = $1 AND state = 'failed'", barrier_id
        )
        await conn.execute(
            f"UPDATE {t.barriers} SET state = 'running', outcome = NULL, error = NULL, token = $2, "
            "failed = $3, inflight = 0, next_unit = coalesce($4, units_total), sweep_from = 0, "
            "reader_owner = NULL, reader_beat = NULL, finisher = NULL, finish_expires = NULL, "
            "read_sent_at = NULL, updated_at = now() WHERE id = $1",
            barrier_id, token, failed, low,
        )
        del reset


def threshold_exceeded(sc: Scatter, b: Any) -> bool:
    failed = int(b["failed"])
    if failed == 0:
        return False
    processed = failed + int(b["succeeded"])
    total = b["expected_total"]
    if total is None and b["reader_done"]:
        total = b["total_items"]
    if total is None and processed >= _MIN_SAMPLE:
        total = processed
    return sc.exceeded(failed, None if total is None else int(total))


async def decide(conn: asyncpg.Connection, t: Tables, b: Any, sc: Scatter, lease: float) -> Claim:
    """With the barrier row locked (``b`` is its fresh state): finish or top up the window.

    Winning the finish takes the finishing claim for ``lease`` seconds (database time)."""
    if b["state"] != "running":
        return Claim()
    bid = b["id"]
    processed = int(b["succeeded"]) + int(b["failed"])
    outcome = None
    if threshold_exceeded(sc, b):
        outcome = "failed"
    elif b["reader_done"] and processed >= int(b["total_items"]) and int(b["inflight"]) <= 0:
        outcome = "gather"
    if outcome is not None:
        finisher = secrets.token_hex(16)
        won = await conn.fetchval(
            f"UPDATE {t.barriers} SET state = 'finishing', outcome = $2, finisher = $3, "
            "finish_expires = now() + make_interval(secs => $4), updated_at = now() "
            "WHERE id = $1 AND state = 'running' RETURNING id", bid, outcome, finisher, lease,
        )
        return Claim(finishing=won is not None, finisher=finisher if won is not None else None)
    free = int(b["max_concurrent"]) - int(b["inflight"])
    start, end = int(b["next_unit"]), min(int(b["next_unit"]) + max(free, 0),
                                          int(b["units_total"]))
    # a window with work in flight is topped up by whole chunks: a chunk that grew
    # (adaptive size) is not cut back to the size of the one that just finished
    whole = min(int(b["chunk_units"]), max(1, int(b["max_concurrent"]) // 2))
    if free <= 0 or end <= start or (int(b["inflight"]) > 0 and end - start < whole
                                     and end < int(b["units_total"])):
        return Claim()
    units = await conn.fetch(
        f"UPDATE {t.items} SET state = 'queued', queued_at = now(), claimed_at = NULL, "
        "claimed_by = NULL, resends = 0 WHERE barrier_id = $1 "
        "AND unit >= $2 AND unit < $3 AND state = 'pending' RETURNING unit", bid, start, end,
    )
    claimed = {int(r["unit"]) for r in units}
    await conn.execute(
        f"UPDATE {t.barriers} SET next_unit = $2, inflight = inflight + $3 WHERE id = $1",
        bid, end, len(claimed),
    )
    return Claim(ranges=unit_ranges(sorted(claimed), int(b["chunk_units"])))


async def lock_and_decide(
    conn: asyncpg.Connection, t: Tables, barrier_id: int, sc: Scatter, lease: float
) -> Claim:
    async with conn.transaction():
        b = await conn.fetchrow(f"SELECT * FROM {t.barriers} WHERE id = $1 FOR UPDATE", barrier_id)
        return Claim() if b is None else await decide(conn, t, b, sc, lease)


async def load_chunk(
    conn: asyncpg.Connection, t: Tables, barrier_id: int, start: int, end: int, pipeline: str,
    owner: str, lease: float,
) -> tuple[Any, list[ItemRow]]:
    """The barrier and the still-queued items of units ``[start, end)`` that ``owner`` may
    run: unclaimed, already its own (a retried message), or whose claim is older than
    ``lease`` seconds (its runner died). Claims them for ``owner``.

    Only a barrier of ``pipeline`` (the one whose worker task runs the chunk): a message
    naming another pipeline gets ``(None, [])`` and runs nothing."""
    b = await conn.fetchrow(
        f"SELECT * FROM {t.barriers} WHERE id = $1 AND pipeline = $2", barrier_id, pipeline)
    if b is None or b["state"] != "running":
        return b, []
    rows = await conn.fetch(
        f"UPDATE {t.items} SET claimed_at = now(), claimed_by = $4, attempts = attempts + 1, "
        "resends = 0 "
        "WHERE barrier_id = $1 AND unit >= $2 AND unit < $3 AND state = 'queued' AND "
        "(claimed_by IS NULL OR claimed_by = $4 OR claimed_at < now() - make_interval(secs => $5)) "
        "RETURNING idx, unit, key, item, attempts", barrier_id, start, end, owner, lease,
    )
    items = sorted((ItemRow(int(r["idx"]), int(r["unit"]), r["key"], r["item"],
                            int(r["attempts"])) for r in rows), key=lambda r: r.idx)
    return b, items


async def record(
    conn: asyncpg.Connection, t: Tables, barrier_id: int, sc: Scatter,
    results: Sequence[tuple[int, str, str | None, str | None]], lease: float,
    resize: int | None = None,
) -> Claim:
    """Record ``(idx, state, result_json, error)`` of one chunk; count only real changes.

    ``resize``: the chunk size this chunk's pace asks for; the barrier's ``chunk_units``
    (the size of the chunks the window is topped up with from now on) moves to it, growing
    at most twofold per chunk."""
    async with conn.transaction():
        changed = await conn.fetch(
            f"UPDATE {t.items} AS i SET state = v.state, result = v.result, error = v.error "
            "FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) "
            "AS v(idx, state, result, error) "
            "WHERE i.barrier_id = $1 AND i.idx = v.idx AND i.state = 'queued' "
            "RETURNING i.unit, i.state",
            barrier_id, [r[0] for r in results], [r[1] for r in results],
            [r[2] for r in results], [r[3] for r in results],
        )
        ok = sum(1 for r in changed if r["state"] == "succeeded")
        units = len({r["unit"] for r in changed})
        b = await conn.fetchrow(
            f"UPDATE {t.barriers} SET succeeded = succeeded + $2, failed = failed + $3, "
            "inflight = greatest(inflight - $4, 0), updated_at = now(), chunk_units = "
            "CASE WHEN $5::integer IS NULL THEN chunk_units ELSE least($5, 2 * chunk_units) END "
            "WHERE id = $1 RETURNING *", barrier_id, ok, len(changed) - ok, units, resize,
        )
        return await decide(conn, t, b, sc, lease)


async def claim_reader(
    conn: asyncpg.Connection, t: Tables, barrier_id: int, owner: str, lease: float,
    pipeline: str,
) -> Any:
    """Take the reader of a barrier of ``pipeline`` if nobody holds it (or its holder
    stopped beating); None otherwise, and for another pipeline's barrier."""
    return await conn.fetchrow(
        f"UPDATE {t.barriers} SET reader_owner = $2, reader_beat = now() WHERE id = $1 "
        "AND pipeline = $4 AND state = 'running' AND NOT reader_done AND (reader_beat IS NULL "
        "OR reader_beat < now() - make_interval(secs => $3)) RETURNING *",
        barrier_id, owner, lease, pipeline,
    )


async def append_page(
    conn: asyncpg.Connection, t: Tables, barrier_id: int, owner: str, sc: Scatter,
    rows: Sequence[tuple[int, int, str, str]], units_total: int, checkpoint: str,
    next_index: int, done: bool, expected_total: int | None, lease: float,
) -> Claim | None:
    """Insert one page and its checkpoint in one transaction; None if the reader lost
    ownership (another reader took over after this one stalled)."""
    async with conn.transaction():
        b = await conn.fetchrow(
            f"SELECT * FROM {t.barriers} WHERE id = $1 FOR UPDATE", barrier_id)
        if b is None or b["reader_owner"] != owner or b["reader_done"]:
            return None
        inserted, reused = 0, 0
        if rows:
            got = await conn.fetch(
                f"INSERT INTO {t.items} (barrier_id, idx, unit, key, item) SELECT $1, * FROM "
                "unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[]) "
                "ON CONFLICT DO NOTHING RETURNING idx",
                barrier_id, [r[0] for r in rows], [r[1] for r in rows],
                [r[2] for r in rows], [r[3] for r in rows],
            )
            inserted = len(got)
            if got and b["reuse_from"] is not None:
                reused = await copy_succeeded(conn, t, barrier_id, int(b["reuse_from"]),
                                              [int(r["idx"]) for r in got])
        b = await conn.fetchrow(
            f"UPDATE {t.barriers} SET total_items = total_items + $2, units_total = $3, "
            "checkpoint = $4::jsonb, next_index = $5, reader_done = $6, reader_beat = now(), "
            "expected_total = coalesce(expected_total, $7), succeeded = succeeded + $8, "
            "updated_at = now() WHERE id = $1 RETURNING *",
            barrier_id, inserted, units_total, checkpoint, next_index, done, expected_total,
            reused,
        )
        return await decide(conn, t, b, sc, lease)
