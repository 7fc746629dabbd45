"""SQL for everything beside scheduling: materializations, lineage, approvals, gates,
route decisions, cursors, ticks, audit, scatter item results and step notes.

The rules (errors, audit entries, JSON columns) are :mod:`flowstone.store_rules`, as in
every store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from flowstone import store_rules as rules
from flowstone.errors import ApprovalError, SignalError
from flowstone.records import (
    Approval,
    AuditEntry,
    Continuation,
    Gate,
    ItemResult,
    MaterializationRecord,
    StepRecord,
)
from flowstone_io_postgres._rows import (
    APPROVAL_COLS,
    GATE_COLS,
    MAT_COLS,
    STEP_COLS,
    to_approval,
    to_audit,
    to_gate,
    to_item,
    to_materialization,
    to_step,
)
from flowstone_io_postgres._sql import Db, Sql

__all__ = [
    "add_step_note",
    "append_audit",
    "cancel_waits",
    "claim_tick",
    "consume_gate",
    "decide_approval",
    "get_step_note",
    "hold_wait",
    "list_materializations",
    "record_route_decision",
    "save_item_results",
    "set_cursor",
]

_MAT_M = ", ".join("m." + c.strip() for c in MAT_COLS.split(","))


async def list_materializations(
    conn: Db,
    sql: Sql,
    pipeline: str,
    asset: str | None,
    partition: str | None,
    run_id: str | None,
    limit: int,
) -> list[MaterializationRecord]:
    rows = await sql(
        "SELECT " + MAT_COLS + " FROM {s}.materializations WHERE pipeline = :pl "
        "AND (CAST(:a AS text) IS NULL OR asset = :a) "
        "AND (CAST(:p AS text) IS NULL OR partition = :p) "
        "AND (CAST(:r AS text) IS NULL OR run_id = :r) ORDER BY seq DESC LIMIT :n"
    ).fetch(conn, {"pl": pipeline, "a": asset, "p": partition, "r": run_id, "n": limit})
    return [to_materialization(r) for r in rows]


UPSTREAM = (
    "SELECT " + _MAT_M + " FROM {s}.materializations d "
    "CROSS JOIN LATERAL unnest(d.upstream) WITH ORDINALITY AS u(id, n) "
    "JOIN {s}.materializations m ON m.id = u.id WHERE d.id = :id ORDER BY u.n"
)
DOWNSTREAM = (
    "SELECT " + _MAT_M + " FROM {s}.lineage l JOIN {s}.materializations m "
    "ON m.id = l.downstream_id WHERE l.upstream_id = :id AND :id = ANY(m.upstream) "
    "ORDER BY m.seq"
)




async def decide_approval(
    conn: Db,
    sql: Sql,
    approval_id: int,
    status: str,
    by: str | None,
    reason: str | None,
) -> Approval:
    """Decide (in a transaction, database time): a late approve/reject raises and the
    rollback leaves the approval pending for the sweeper to expire."""
    kind, detail = rules.decision_audit(approval_id, status, by, reason)
    row = await sql(
        "WITH d AS (UPDATE {s}.approvals SET status = :st, decided_by = :by, reason = :reason, "
        "decided_at = now() WHERE id = :id AND status = 'pending' RETURNING " + APPROVAL_COLS
        + "), au AS (INSERT INTO {s}.audit (run_id, at, kind, asset, partition, detail) "
        "SELECT run_id, now(), :kind, asset, partition, CAST(:detail AS jsonb) FROM d) "
        "SELECT " + APPROVAL_COLS + ", expires_at <= now() AS late FROM d"
    ).fetchrow(conn, {"id": approval_id, "st": status, "by": by, "reason": reason,
                      "kind": kind, "detail": rules.to_json(detail, "audit detail")})  # fmt: skip
    if row is None:
        old = await sql("SELECT status, decided_by FROM {s}.approvals WHERE id = :id").fetchrow(
            conn, {"id": approval_id}
        )
        raise rules.approval_not_decidable(
            approval_id, None if old is None else old[0], None if old is None else old[1]
        )
    fields = dict(row.items())
    late = fields.pop("late")
    approval = to_approval(fields)
    if late and status != "expired":
        raise ApprovalError(rules.wait_too_late(f"approval {approval_id}", approval.expires_at))
    return approval


async def consume_gate(
    conn: Db, sql: Sql, token_hash: str, payload: Any, status: str, claim: Continuation | None
) -> Gate:
    """Consume (in a transaction, database time), holding the gate's waiting step for
    ``claim``; raising rolls everything back and leaves the gate pending."""
    payload_json = None if payload is None else rules.to_json(payload, "signal payload")
    row = await sql(
        "WITH d AS (UPDATE {s}.gates SET status = :st, payload = CAST(:payload AS jsonb), "
        "signaled_at = now() WHERE token_hash = :th AND status = 'pending' RETURNING "
        + GATE_COLS + "), au AS (INSERT INTO {s}.audit (run_id, at, kind, asset, partition, "
        "detail) SELECT run_id, now(), :kind, asset, partition, CAST('{}' AS jsonb) FROM d) "
        "SELECT " + GATE_COLS + ", expires_at <= now() AS late FROM d"
    ).fetchrow(conn, {"th": token_hash, "st": status, "payload": payload_json,
                      "kind": f"gate_{status}"})  # fmt: skip
    if row is None:
        old = await sql(
            "SELECT status, run_id, asset FROM {s}.gates WHERE token_hash = :th"
        ).fetchrow(conn, {"th": token_hash})
        raise rules.gate_not_consumable(*(tuple(old) if old is not None else (None,)))
    fields = dict(row.items())
    late = fields.pop("late")
    gate = to_gate(fields)
    if late and status == "signaled":
        raise SignalError(rules.wait_too_late("this signal gate", gate.expires_at))
    if claim is not None:
        key = {"r": gate.run_id, "a": gate.asset, "p": gate.partition}
        if await hold_wait(conn, sql, key, claim, waiting_only=True) is None:
            raise rules.gate_not_consumable("finished", gate.run_id, gate.asset)
    return gate


async def hold_wait(
    conn: Db, sql: Sql, key: Mapping[str, str], claim: Continuation, *, waiting_only: bool
) -> StepRecord | None:
    """Hold a waiting step for the resolver ``claim`` (the next attempt, database time).
    Unless ``waiting_only``, only a step already held by ``claim.owner`` or under a lapsed
    resolver's claim (``store_rules.wait_takeable``, in SQL)."""
    row = await sql(
        "UPDATE {s}.steps SET attempt = attempt + 1, owner = :owner, "
        "lease_expires_at = now() + make_interval(secs => :lease), updated_at = now() "
        "WHERE run_id = :r AND asset = :a AND partition = :p AND state = 'waiting' "
        "AND (CAST(:any AS boolean) OR (owner IS NOT NULL "
        "AND (owner = :owner OR lease_expires_at <= now()))) RETURNING " + STEP_COLS
    ).fetchrow(conn, {**key, "owner": claim.owner, "lease": float(claim.lease_seconds),
                      "any": waiting_only})  # fmt: skip
    return None if row is None else to_step(row)


async def record_route_decision(
    conn: Db, sql: Sql, key: dict[str, str], branch: str, now: datetime
) -> str:
    inserted = await sql(
        "INSERT INTO {s}.route_decisions (run_id, router, partition, branch, decided_at) "
        "VALUES (:r, :router, :p, :b, :now) ON CONFLICT DO NOTHING RETURNING branch"
    ).fetchval(conn, {**key, "b": branch, "now": now})
    if inserted is not None:
        return str(inserted)
    # Lost the race (or a replay): a fresh statement sees the committed winner.
    existing = await sql(
        "SELECT branch FROM {s}.route_decisions WHERE run_id = :r AND router = :router "
        "AND partition = :p"
    ).fetchval(conn, key)
    return str(existing)


async def set_cursor(
    conn: Db, sql: Sql, name: str, value: str, expected: str | None, now: datetime
) -> bool:
    if expected is None:
        template = (
            "INSERT INTO {s}.cursors (name, value, updated_at) VALUES (:n, :v, :now) "
            "ON CONFLICT DO NOTHING RETURNING 1"
        )
    else:
        template = (
            "UPDATE {s}.cursors SET value = :v, updated_at = :now WHERE name = :n "
            "AND value = :e RETURNING 1"
        )
    params: dict[str, Any] = {"n": name, "v": value, "now": now}
    if expected is not None:
        params["e"] = expected
    return await sql(template).fetchrow(conn, params) is not None


async def claim_tick(conn: Db, sql: Sql, name: str, tick: str, now: datetime) -> bool:
    row = await sql(
        "INSERT INTO {s}.ticks (name, tick, claimed_at) VALUES (:n, :t, :now) "
        "ON CONFLICT DO NOTHING RETURNING 1"
    ).fetchrow(conn, {"n": name, "t": tick, "now": now})
    return row is not None


async def append_audit(
    conn: Db,
    sql: Sql,
    run_id: str,
    kind: str,
    asset: str | None,
    partition: str | None,
    detail: Mapping[str, Any] | None,
    now: datetime,
) -> None:
    await sql(
        "INSERT INTO {s}.audit (run_id, at, kind, asset, partition, detail) "
        "VALUES (:r, :now, :k, :a, :p, CAST(:d AS jsonb))"
    ).execute(
        conn,
        {"r": run_id, "now": now, "k": kind, "a": asset, "p": partition,
         "d": rules.to_json(dict(detail or {}), f"audit detail of {kind!r}")},
    )  # fmt: skip


async def list_audit(conn: Db, sql: Sql, run_id: str) -> list[AuditEntry]:
    rows = await sql(
        "SELECT id, run_id, at, kind, asset, partition, detail FROM {s}.audit "
        "WHERE run_id = :r ORDER BY id"
    ).fetch(conn, {"r": run_id})
    return [to_audit(r) for r in rows]


async def save_item_results(
    conn: Db, sql: Sql, key: dict[str, str], results: Sequence[ItemResult]
) -> None:
    # Last write wins for an index repeated within one call, as a loop of upserts would.
    latest = {r.index: r for r in results}
    items = [latest[i] for i in sorted(latest)]
    await sql(
        "INSERT INTO {s}.item_results (run_id, asset, partition, idx, key, state, value_json, "
        "error) SELECT :r, :a, :p, u.idx, u.key, u.state, u.value_json, u.error FROM "
        "unnest(CAST(:idx AS integer[]), CAST(:keys AS text[]), CAST(:states AS text[]), "
        "CAST(:values AS text[]), CAST(:errors AS text[])) "
        "AS u(idx, key, state, value_json, error) "
        "ON CONFLICT (run_id, asset, partition, idx) DO UPDATE SET key = EXCLUDED.key, "
        "state = EXCLUDED.state, value_json = EXCLUDED.value_json, error = EXCLUDED.error"
    ).execute(
        conn,
        {
            **key,
            "idx": [r.index for r in items],
            "keys": [r.key for r in items],
            "states": [r.state for r in items],
            "values": [r.value_json for r in items],
            "errors": [r.error for r in items],
        },
    )


async def load_item_results(conn: Db, sql: Sql, key: dict[str, str]) -> list[ItemResult]:
    rows = await sql(
        "SELECT idx AS index, key, state, value_json, error FROM {s}.item_results "
        "WHERE run_id = :r AND asset = :a AND partition = :p ORDER BY idx"
    ).fetch(conn, key)
    return [to_item(r) for r in rows]


async def fetch_gates(conn: Db, sql: Sql, template: str, **params: Any) -> list[Gate]:
    return [to_gate(r) for r in await sql(template).fetch(conn, params)]


async def add_step_note(
    conn: Db, sql: Sql, key: dict[str, str], kind: str, value: str, now: datetime
) -> str:
    """Insert-if-absent, then the note that stands (a fresh statement sees a racing
    writer's committed row)."""
    params = {**key, "k": kind, "v": value, "now": now}
    inserted = await sql(
        "INSERT INTO {s}.step_notes (run_id, asset, partition, kind, value, created_at) "
        "VALUES (:r, :a, :p, :k, :v, :now) ON CONFLICT DO NOTHING RETURNING value"
    ).fetchval(conn, params)
    if inserted is not None:
        return str(inserted)
    return str(await get_step_note(conn, sql, key, kind))


async def get_step_note(conn: Db, sql: Sql, key: dict[str, str], kind: str) -> str | None:
    found = await sql(
        "SELECT value FROM {s}.step_notes WHERE run_id = :r AND asset = :a "
        "AND partition = :p AND kind = :k"
    ).fetchval(conn, {**key, "k": kind})
    return None if found is None else str(found)


async def cancel_waits(conn: Db, sql: Sql, run_id: str) -> None:
    """A cancelled run's pending approvals and gates end ``cancelled`` (same transaction):
    an old token or approval id cannot finish a step of the cancelled or resumed run."""
    for table in ("approvals", "gates"):
        await sql(
            "UPDATE {s}." + table + " SET status = 'cancelled' "
            "WHERE run_id = :r AND status = 'pending'"
        ).execute(conn, {"r": run_id})
