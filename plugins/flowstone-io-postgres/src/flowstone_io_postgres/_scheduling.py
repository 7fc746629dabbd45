"""The scheduling SQL: plans, claims, leases and ``finish_step``.

Concurrency notes (READ COMMITTED throughout):

* exactly-once transitions come from ``UPDATE ... WHERE state IN (...) RETURNING``: of two
  concurrent callers, the second re-checks the WHERE clause against the committed row and
  matches nothing;
* dependents are locked in (asset, partition) order before being decremented, so two
  finishers sharing dependents always queue in the same order;
* the run status is recomputed after locking the run row, in a fresh statement whose
  snapshot therefore includes every finisher that committed before us: two steps finishing
  at the same moment cannot both see the other one still running.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from flowstone import store_rules as rules
from flowstone.errors import StorageError, UsageError
from flowstone.protocols import ClaimedReads
from flowstone.records import (
    Continuation,
    Fence,
    RunRecord,
    RunStatus,
    StagedValue,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)
from flowstone_io_postgres._records import append_audit, cancel_waits
from flowstone_io_postgres._rows import STEP_COL_COUNT, STEP_COLS, to_materialization, to_step
from flowstone_io_postgres._runtime import Connections
from flowstone_io_postgres._sql import PARAM, Db, Sql
from flowstone_io_postgres._values_table import StagedWrite

__all__ = [
    "cancel_run",
    "claim_step",
    "create_run",
    "finish_step",
    "renew_lease",
    "reopen_run",
    "resend_steps",
    "retry_step",
    "stale_steps",
]

_FINISHABLE = "('ready','queued','running','waiting')"
_TERMINAL = "('succeeded','failed','skipped','upstream_failed','cancelled')"

_CREATE = """
WITH r AS (
    INSERT INTO {s}.runs (run_id, pipeline, targets, partition, status, created_at,
                          updated_at, error, tags)
    VALUES (:run_id, :pipeline, CAST(:targets AS text[]), :partition, :status, :created_at,
            now(), :error, CAST(:tags AS jsonb))
    RETURNING run_id
), st AS (
    INSERT INTO {s}.steps (run_id, asset, partition, ordinal, state, remaining_deps,
                           materialization_id, updated_at)
    SELECT r.run_id, u.asset, u.partition, u.ordinal, u.state, u.remaining, u.mat, now()
    FROM r, unnest(CAST(:assets AS text[]), CAST(:partitions AS text[]),
                   CAST(:ordinals AS integer[]), CAST(:states AS text[]),
                   CAST(:remaining AS integer[]), CAST(:mats AS text[]))
         AS u(asset, partition, ordinal, state, remaining, mat)
), e AS (
    INSERT INTO {s}.edges (run_id, dep_asset, dep_partition, asset, partition)
    SELECT r.run_id, u.dep_asset, u.dep_partition, u.asset, u.partition
    FROM r, unnest(CAST(:e_dep_assets AS text[]), CAST(:e_dep_partitions AS text[]),
                   CAST(:e_assets AS text[]), CAST(:e_partitions AS text[]))
         AS u(dep_asset, dep_partition, asset, partition)
), au AS (
    INSERT INTO {s}.audit (run_id, at, kind, detail)
    SELECT r.run_id, now(), 'run_created', CAST(:audit AS jsonb) FROM r
)
SELECT now() FROM r
"""


async def create_run(
    conn: Db, sql: Sql, run: RunRecord, steps: Sequence[StepSpec]
) -> tuple[StepRecord, ...]:
    """Insert run, steps and edges in one statement; return the ready steps.

    The plan is validated, and each step's first state counted, by
    :func:`flowstone.store_rules.plan_steps`, as in every store. Every timestamp written
    is the database's ``now()``.
    """
    planned = rules.plan_steps(run.run_id, steps)
    assets = [p.spec.asset for p in planned]
    partitions = [p.spec.partition for p in planned]
    states = [p.state for p in planned]
    remaining = [p.remaining_deps for p in planned]
    mats = [p.spec.reused_materialization_id for p in planned]
    edges = {(da, dp, p.spec.asset, p.spec.partition) for p in planned for da, dp in p.deps}
    ready_keys = [(p.spec.asset, p.spec.partition) for p in planned if p.state == "ready"]
    runnable = any(s == "pending" for s in states) or bool(ready_keys)
    ordered = sorted(edges)
    now = await sql(_CREATE).fetchval(
        conn,
        {
            "run_id": run.run_id,
            "pipeline": run.pipeline,
            "targets": list(run.targets),
            "partition": run.partition,
            "status": "running" if runnable else "succeeded",
            "created_at": rules.require_utc(run.created_at, "RunRecord.created_at"),
            "error": run.error,
            "tags": rules.to_json(dict(run.tags), "run tags"),
            "audit": rules.to_json(
                {"steps": len(assets), "ready": len(ready_keys)}, "audit detail"
            ),
            "assets": assets,
            "partitions": partitions,
            "ordinals": list(range(len(assets))),
            "states": states,
            "remaining": remaining,
            "mats": mats,
            "e_dep_assets": [e[0] for e in ordered],
            "e_dep_partitions": [e[1] for e in ordered],
            "e_assets": [e[2] for e in ordered],
            "e_partitions": [e[3] for e in ordered],
        },
    )
    return tuple(
        StepRecord(run.run_id, asset, partition, "ready", 0, updated_at=now)
        for asset, partition in ready_keys
    )


async def cancel_run(conn: Db, sql: Sql, run_id: str) -> bool:
    # now(): the transaction's start by the database's clock, the time of every write below
    found = await sql("SELECT status, now() AS now FROM {s}.runs WHERE run_id = :r").fetchrow(
        conn, {"r": run_id}
    )
    if found is None:
        raise rules.run_not_found(run_id, "Postgres run store")
    status, now = found["status"], found["now"]
    if status in ("succeeded", "failed", "cancelled"):
        return False
    # Steps first (in key order), then the run row: the same order finish_step locks in.
    await sql(
        "WITH l AS (SELECT asset, partition FROM {s}.steps WHERE run_id = :r AND state NOT IN "
        + _TERMINAL
        + " ORDER BY asset, partition FOR UPDATE) "
        "UPDATE {s}.steps s SET state = 'cancelled', owner = NULL, lease_expires_at = NULL, "
        "updated_at = :now FROM l WHERE s.run_id = :r AND s.asset = l.asset "
        "AND s.partition = l.partition AND s.state NOT IN " + _TERMINAL
    ).execute(conn, {"r": run_id, "now": now})
    done = await sql(
        "UPDATE {s}.runs SET status = 'cancelled', updated_at = :now WHERE run_id = :r "
        "AND status NOT IN ('succeeded','failed','cancelled') RETURNING run_id"
    ).fetchval(conn, {"r": run_id, "now": now})
    if done is not None:
        await cancel_waits(conn, sql, run_id)
        await append_audit(conn, sql, run_id, "run_cancelled", None, None, {}, now)
    return done is not None


async def reopen_run(conn: Db, sql: Sql, run_id: str) -> tuple[StepRecord, ...]:
    # now(): the transaction's start by the database's clock, the time of every write below
    found = await sql(
        "SELECT status, now() AS now FROM {s}.runs WHERE run_id = :r FOR UPDATE"
    ).fetchrow(conn, {"r": run_id})
    if found is None:
        raise rules.run_not_found(run_id, "Postgres run store")
    status, now = found["status"], found["now"]
    if status not in ("failed", "cancelled"):
        return ()
    p = {"r": run_id, "now": now}
    reopened = await sql(
        "UPDATE {s}.steps SET state = 'pending', attempt = 0, owner = NULL, "
        "lease_expires_at = NULL, not_before = NULL, error = NULL, materialization_id = NULL, "
        "resent_at = NULL, resends = 0, updated_at = :now WHERE run_id = :r "
        "AND state IN ('failed','upstream_failed','cancelled') RETURNING 1"
    ).fetch(conn, p)
    await sql(
        "UPDATE {s}.steps s SET remaining_deps = (SELECT count(*) FROM {s}.edges e "
        "JOIN {s}.steps d ON d.run_id = e.run_id AND d.asset = e.dep_asset "
        "AND d.partition = e.dep_partition WHERE e.run_id = s.run_id AND e.asset = s.asset "
        "AND e.partition = s.partition AND d.state NOT IN " + _TERMINAL + ") "
        "WHERE s.run_id = :r AND s.state = 'pending'"
    ).execute(conn, {"r": run_id})
    rows = await sql(
        "UPDATE {s}.steps SET state = 'ready', updated_at = :now WHERE run_id = :r "
        "AND state = 'pending' AND remaining_deps = 0 RETURNING " + STEP_COLS
    ).fetch(conn, p)
    ready = tuple(sorted((to_step(r) for r in rows), key=lambda s: (s.asset, s.partition)))
    states = await sql("SELECT DISTINCT state FROM {s}.steps WHERE run_id = :r").fetch(conn, p)
    await sql(
        "UPDATE {s}.runs SET status = :st, error = NULL, updated_at = :now WHERE run_id = :r"
    ).execute(conn, {**p, "st": rules.run_status_from({r["state"] for r in states})})
    await append_audit(conn, sql, run_id, "run_reopened", None, None, {"steps": len(reopened)}, now)
    return ready


# Claims and lease renewals commit without waiting for the WAL flush (the transaction-local
# ``synchronous_commit = off``; every later synchronous commit flushes them too). Losing one
# to a server crash is harmless: the step is ``ready`` (or running under an older lease)
# again, the worker's ``finish_step`` (fenced by the lost claim) is refused, and the sweeper
# re-dispatches it -- the same as a lease taken over. What must survive a crash (runs, completions,
# values, decisions) is committed synchronously. Saves ~45 us of server CPU and ~100 us of
# latency per claim.
_RELAXED = "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed "
# The claim locks the step (``o``, FOR UPDATE) to report what it was before (store_rules.
# claim_facts: how long it waited, whether this takes over another owner's lease); every
# comparison and the new lease are the database's now(), never a worker's clock.
_CLAIM = (
    "UPDATE {s}.steps s SET state = 'running', attempt = s.attempt + 1, owner = :owner, "
    "lease_expires_at = now() + make_interval(secs => :lease_s), not_before = NULL, "
    "updated_at = now(), resent_at = NULL, resends = 0 "
    "FROM (SELECT state, owner, updated_at, not_before FROM {s}.steps "
    "WHERE run_id = :r AND asset = :a AND partition = :p FOR UPDATE) AS o, "
    "(SELECT set_config('synchronous_commit', 'off', true)) AS relaxed "
    "WHERE s.run_id = :r AND s.asset = :a AND s.partition = :p AND ("
    "(s.state = 'ready' AND (s.not_before IS NULL OR s.not_before <= now())) "
    "OR (s.state = 'running' AND s.lease_expires_at <= now())) "
    # not in a cancelled run, nor in a run of another pipeline (store_rules.claimable_by)
    "AND EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = :r AND status <> 'cancelled' "
    "AND (CAST(:pipeline AS text) IS NULL OR pipeline = :pipeline)) "
    "RETURNING " + ", ".join("s." + c.strip() for c in STEP_COLS.split(",")) + ", "
    "CASE WHEN o.state = 'ready' THEN GREATEST(0, extract(epoch FROM now() - "
    "GREATEST(o.updated_at, COALESCE(o.not_before, o.updated_at))))::float8 END AS queued_s, "
    "(o.state = 'running' AND o.owner IS NOT NULL AND o.owner <> :owner) AS took_over"
)


async def claim_step(
    conn: Db,
    sql: Sql,
    key: dict[str, str],
    owner: str,
    lease: float,
    pipeline: str | None = None,
) -> StepRecord | None:
    row = await sql(_CLAIM).fetchrow(
        conn, {**key, "owner": owner, "lease_s": float(lease), "pipeline": pipeline}
    )
    if row is None:
        return None
    step = to_step(row, limit=STEP_COL_COUNT)
    return dataclasses.replace(step, queued_s=row["queued_s"], took_over=bool(row["took_over"]))


async def claim_steps(
    conn: Db,
    sql: Sql,
    keys: Sequence[dict[str, str]],
    owner: str,
    lease: float,
    pipeline: str | None = None,
) -> list[StepRecord | None]:
    """:func:`claim_step` for each of ``keys``, the statements sent together (one round
    trip, asyncpg's pipelined ``fetchmany``), in key order (each locks its one step: two
    callers claiming overlapping steps wait for each other in one order, never in a
    cycle). Returns the claims in the order of ``keys``, ``None`` where the step was not
    claimable (a key given twice is claimed once). One statement per key, not one for
    all: each is planned on the step's primary key whatever the table's statistics say
    (a join of the keys with ``steps`` is planned as a scan of the table while it is
    young and unanalyzed)."""
    stmt = sql(_CLAIM)
    ordered = sorted({(k["r"], k["a"], k["p"]) for k in keys})
    rows = await conn.fetchmany(stmt.sql, [
        stmt.args({"r": r, "a": a, "p": p, "owner": owner, "lease_s": float(lease),
                   "pipeline": pipeline})
        for r, a, p in ordered
    ])  # fmt: skip
    claimed: dict[tuple[str, str, str], StepRecord] = {}
    for row in rows:
        step = to_step(row, limit=STEP_COL_COUNT)
        claimed[(step.run_id, step.asset, step.partition)] = dataclasses.replace(
            step, queued_s=row["queued_s"], took_over=bool(row["took_over"])
        )
    return [claimed.pop((k["r"], k["a"], k["p"]), None) for k in keys]


async def renew_lease(
    conn: Db,
    sql: Sql,
    key: dict[str, str],
    owner: str,
    lease: float,
    attempt: int | None = None,
) -> bool:
    # the fence (store_rules.fence_holds) in the write itself; the lease from now()
    row = await sql(
        "UPDATE {s}.steps SET lease_expires_at = now() + make_interval(secs => :lease_s) "
        + _RELAXED
        + "WHERE run_id = :r AND asset = :a AND partition = :p "
        "AND state = 'running' AND owner = :owner "
        "AND (CAST(:attempt AS integer) IS NULL OR attempt = :attempt) RETURNING 1"
    ).fetchrow(conn, {**key, "owner": owner, "lease_s": float(lease), "attempt": attempt})
    return row is not None


async def retry_step(
    conn: Db,
    sql: Sql,
    key: dict[str, str],
    delay: float,
    error: str,
    fence: Fence | None = None,
) -> StepRecord | None:
    # one statement: the audit entry (rules.retry_detail, built here) commits with the
    # retry; not_before is the database's now() plus the delay
    row = await sql(
        "WITH u AS (UPDATE {s}.steps SET state = 'ready', "
        "not_before = now() + make_interval(secs => :delay_s), error = :err, "
        "owner = NULL, lease_expires_at = NULL, updated_at = now() WHERE run_id = :r "
        "AND asset = :a AND partition = :p AND state = 'running' "
        "AND (CAST(:f_owner AS text) IS NULL OR (owner = :f_owner AND attempt = :f_attempt)) "
        "RETURNING " + STEP_COLS + "), "
        "au AS (INSERT INTO {s}.audit (run_id, at, kind, asset, partition, detail) "
        "SELECT :r, now(), 'step_retry', :a, :p, jsonb_build_object('attempt', attempt, "
        "'error', CAST(:err AS text), 'not_before', "
        + _ISO_UTC.format(col="not_before") + ") FROM u) "
        "SELECT " + STEP_COLS + " FROM u"
    ).fetchrow(conn, {**key, "delay_s": float(delay), "err": error,
                      "f_owner": None if fence is None else fence.owner,
                      "f_attempt": None if fence is None else fence.attempt})  # fmt: skip
    return None if row is None else to_step(row)


# a timestamptz as Python's datetime.isoformat() writes it in UTC (rules.retry_detail)
_ISO_UTC = "to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"

_STALE = (
    "SELECT " + ", ".join("s." + c.strip() for c in STEP_COLS.split(",")) + " FROM {s}.steps s "
    "JOIN {s}.runs r ON r.run_id = s.run_id AND r.status = 'running' "
    "WHERE (s.state = 'ready' AND GREATEST(s.updated_at, COALESCE(s.not_before, s.updated_at)) "
    "<= :cutoff AND (s.not_before IS NULL OR s.not_before <= :now)) "
    "OR (s.state = 'running' AND s.lease_expires_at <= :now) ORDER BY s.updated_at"
)


async def stale_steps(conn: Db, sql: Sql, now: datetime, ready_for: float) -> list[StepRecord]:
    """The read-only backlog report at the caller's ``now`` (see
    ``RunStore.stale_steps``); the sweeper's selection is :func:`resend_steps`."""
    rows = await sql(_STALE).fetch(conn, {"now": now, "cutoff": now - timedelta(seconds=ready_for)})
    return [to_step(r) for r in rows]


# store_rules.resend_due in SQL, by the database's clock: the due steps are locked (SKIP
# LOCKED: a step being claimed, or taken by a concurrent sweeper, is left to them),
# stamped and returned in one statement, never-re-sent first, then the oldest, at most
# :limit. A lost stamp (the commit is relaxed, as a claim's) only allows one early re-send.
_RESEND = (
    "WITH due AS (SELECT s.run_id, s.asset, s.partition FROM {s}.steps s "
    "JOIN {s}.runs r ON r.run_id = s.run_id AND r.status = 'running' "
    "AND (CAST(:pipeline AS text) IS NULL OR r.pipeline = :pipeline) "
    "WHERE ((s.state = 'ready' AND GREATEST(s.updated_at, COALESCE(s.not_before, s.updated_at)) "
    "<= now() - make_interval(secs => :ready_for_s) "
    "AND (s.not_before IS NULL OR s.not_before <= now())) "
    "OR (s.state = 'running' AND s.lease_expires_at <= now())) "
    "AND (s.resent_at IS NULL OR s.resent_at <= now() - make_interval(secs => "
    ":ready_for_s * power(2, LEAST(s.resends, :doublings)))) "
    "ORDER BY s.resent_at IS NOT NULL, COALESCE(s.resent_at, s.updated_at) "
    "LIMIT :limit FOR UPDATE OF s SKIP LOCKED) "
    "UPDATE {s}.steps s SET resent_at = now(), resends = s.resends + 1 "
    "FROM due, (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed "
    "WHERE s.run_id = due.run_id AND s.asset = due.asset AND s.partition = due.partition "
    "AND s.state IN ('ready', 'running') "
    "RETURNING " + ", ".join("s." + c.strip() for c in STEP_COLS.split(","))
)


async def resend_steps(
    conn: Db, sql: Sql, ready_for: float, pipeline: str | None, limit: int
) -> list[StepRecord]:
    rows = await sql(_RESEND).fetch(
        conn,
        {"ready_for_s": float(ready_for), "pipeline": pipeline,
         "doublings": rules.RESEND_BACKOFF_DOUBLINGS, "limit": max(0, limit)},
    )  # fmt: skip
    steps = (to_step(r) for r in rows)
    return sorted(steps, key=lambda s: s.updated_at or datetime.min.replace(tzinfo=UTC))


# One round trip: the server-side function of migration 0002 runs the whole transaction.
_FINISH = (
    "SELECT applied, step_state, run_status, ready_steps, claimed, claimed_inputs, "
    "claimed_input_mats FROM {s}.finish_step("
    ":r, :a, :p, :state, :error, :from, :detail, :now, "
    ":mat_id, :m_pipeline, :m_state, :m_io, :m_loc, :m_attempt, :m_started, :m_finished, "
    ":m_error, :m_up, :m_meta, "
    ":ap_pipeline, :ap_message, :ap_status, :ap_created, :ap_expires, :ap_io, :ap_loc, :ap_meta, "
    ":g_token, :g_pipeline, :g_status, :g_created, :g_expires, :g_payload, :g_meta, "
    ":claim_owner, :claim_lease, :fence_owner, :fence_attempt, :settle, "
    ":lock_runs, :lock_assets, :lock_parts, :settle_run)"
)
# A run's status recomputed once for a batch of finishes of several shapes (migration 0010).
# Each run settled in turn, in the order given (a function scan of the array emits its
# elements in order, and each row's settle_run runs before the next row's).
_SETTLE_MANY = (
    "SELECT {s}.settle_run(r.run_id) AS run_status "
    "FROM unnest(CAST(:runs AS text[])) AS r(run_id)"
)
# A batch of several shapes first locks the pending dependents of all its finishes, in one
# global order (a batch of one shape: its first finish_step call, the same statement).
# Each key's edges and each dependent's step are looked up on their own (LATERAL with
# OFFSET 0: parameterized by the outer row, never flattened into a join): a join of the
# keys with the tables is planned as a scan of them while they are young and unanalyzed,
# and asyncpg's prepared statement keeps that generic plan as the tables grow (a scan of
# every edge per batch). The dependents come sorted (the ordered subquery drives the
# nested loop), so each is locked in (run, asset, partition) order.
_LOCK_DEPENDENTS = (
    "SELECT 1 FROM (SELECT DISTINCT k.r, d.asset, d.partition FROM unnest("
    "CAST(:runs AS text[]), CAST(:assets AS text[]), CAST(:parts AS text[])) AS k(r, a, p) "
    "CROSS JOIN LATERAL (SELECT e.asset, e.partition FROM {s}.edges e "
    "WHERE e.run_id = k.r AND e.dep_asset = k.a AND e.dep_partition = k.p OFFSET 0) AS d "
    "ORDER BY 1, 2, 3) AS t "
    "CROSS JOIN LATERAL (SELECT 1 FROM {s}.steps s WHERE s.run_id = t.r "
    "AND s.asset = t.asset AND s.partition = t.partition AND s.state = 'pending' "
    "FOR UPDATE) AS l"
)
# The claimed step's inputs stored in one value table: (location, format, value_json, data),
# read by the VOLATILE function of migration 0004 (a snapshot taken after the claim).
_PREFETCH = (
    "SELECT ROW(r.location, r.format, r.value_json, r.data) FROM {{s}}.read_values("
    "to_regclass(CAST(:pf_table_{i} AS text)), ARRAY(SELECT m.location "
    "FROM unnest(f.claimed_input_mats) AS m WHERE m.state = 'succeeded' "
    "AND m.io_manager = ANY(CAST(:pf_{i} AS text[])))) AS r"
)
_NO_MAT = dict.fromkeys(
    ("mat_id", "m_pipeline", "m_state", "m_io", "m_loc", "m_attempt", "m_started",
     "m_finished", "m_error", "m_up", "m_meta")
)  # fmt: skip
_NO_APPROVAL = dict.fromkeys(
    ("ap_pipeline", "ap_message", "ap_status", "ap_created", "ap_expires", "ap_io", "ap_loc",
     "ap_meta")
)  # fmt: skip
_NO_GATE = dict.fromkeys(
    ("g_token", "g_pipeline", "g_status", "g_created", "g_expires", "g_payload", "g_meta")
)


def finish_params(
    key: dict[str, str],
    outcome: StepOutcome,
    now: datetime,
    then: Continuation | None = None,
    fence: Fence | None = None,
) -> dict[str, object]:
    """Every argument of the ``finish_step`` function for ``outcome``: checked, bound to the
    step and encoded by :func:`flowstone.store_rules.bind_outcome`, as in every store; the
    ``fence`` is checked by the function (:func:`flowstone.store_rules.fence_holds`)."""
    where = f"finish_step(run {key['r']!r}, asset {key['a']!r}, partition {key['p']!r})"
    bound = rules.bind_outcome(key["r"], key["a"], key["p"], outcome, where)
    params: dict[str, object] = {
        **key, **_NO_MAT, **_NO_APPROVAL, **_NO_GATE,
        "state": outcome.state,
        "error": outcome.error,
        "from": sorted(rules.accepted_states(outcome)),
        "detail": rules.to_json(rules.finish_detail(None, outcome), "audit detail"),
        "now": now,
        "claim_owner": None if then is None else then.owner,
        "claim_lease": None if then is None else now + timedelta(seconds=then.lease_seconds),
        "fence_owner": None if fence is None else fence.owner,
        "fence_attempt": None if fence is None else fence.attempt,
        "settle": True,
        "lock_runs": None, "lock_assets": None, "lock_parts": None, "settle_run": False,
    }  # fmt: skip
    if (mat := bound.materialization) is not None:
        params.update(
            mat_id=mat.id, m_pipeline=mat.pipeline, m_state=mat.state, m_io=mat.io_manager,
            m_loc=mat.location, m_attempt=mat.attempt, m_started=mat.started_at,
            m_finished=mat.finished_at, m_error=mat.error, m_up=list(mat.upstream),
            m_meta=bound.materialization_metadata_json,
        )  # fmt: skip
    if (a := bound.approval) is not None:
        params.update(
            ap_pipeline=a.pipeline, ap_message=a.message, ap_status=a.status,
            ap_created=a.created_at, ap_expires=a.expires_at, ap_io=a.io_manager,
            ap_loc=a.location, ap_meta=bound.approval_metadata_json,
        )  # fmt: skip
    if (g := bound.gate) is not None:
        params.update(
            g_token=g.token_hash, g_pipeline=g.pipeline, g_status=g.status,
            g_created=g.created_at, g_expires=g.expires_at,
            g_payload=None if g.payload is None else bound.gate_payload_json,
            g_meta=bound.gate_metadata_json,
        )  # fmt: skip
    return params


async def finish_step(
    conn: Db,
    sql: Sql,
    key: dict[str, str],
    params: dict[str, object],
    staged: Sequence[StagedValue] = (),
    prefetch: Mapping[str, Sequence[str]] | None = None,
) -> tuple[StepTransition, ClaimedReads | None]:
    """See :meth:`flowstone.protocols.RunStore.finish_step`; one statement, one transaction.

    ``params`` comes from :func:`finish_params`. Each staged value's write runs in the same
    statement, as a data-modifying ``WITH`` (PostgreSQL always runs those to completion).
    ``prefetch`` maps value tables (quoted SQL names) to the IO managers writing there: the
    claimed step's inputs stored in them come back as ``claimed_values``, read by the same
    statement after the claim (``read_values``, with a snapshot taken then: an input
    committed by a racing finisher that the claim waited for is among them).
    The caller retries a deadlock victim.
    """
    template, params = _finish_statement(params, staged, prefetch)
    row = await sql(template).fetchrow(conn, params)
    return _transition(key, row, bool(prefetch))


def _finish_statement(
    params: dict[str, object],
    staged: Sequence[StagedValue],
    prefetch: Mapping[str, Sequence[str]] | None,
) -> tuple[str, dict[str, object]]:
    """The statement of one :func:`finish_step` and its parameters: ``finish_step`` itself,
    each staged value's write as a data-modifying ``WITH`` and, with ``prefetch``, the
    claimed step's inputs read after the claim. Finishes of the same shape (as many staged
    values, the same value tables) share the statement's text."""
    params = dict(params)
    parts = []
    for i, value in enumerate(staged):
        write = value.payload
        if not isinstance(write, StagedWrite):
            raise StorageError(
                f"the value staged at {value.location} was not staged by a PostgresIOManager "
                f"({type(write).__name__}); store it with its own IO manager instead"
            )
        parts.append(f"staged_{i} AS ({_renamed(write.statement, f'v{i}_')})")
        params.update((f"v{i}_{k}", v) for k, v in write.params.items())
    template = _FINISH
    if prefetch:
        reads = []
        for i, (table, managers) in enumerate(sorted(prefetch.items())):
            reads.append(_PREFETCH.format(i=i))
            params[f"pf_table_{i}"] = table
            params[f"pf_{i}"] = list(managers)
        parts.append(f"f AS MATERIALIZED ({_FINISH})")
        template = "SELECT f.*, ARRAY(" + " UNION ALL ".join(reads) + ") AS claimed_values FROM f"
    if parts:
        template = "WITH " + ", ".join(parts) + " " + template
    return template, params


def _transition(
    key: dict[str, str], row: Any, prefetched: bool
) -> tuple[StepTransition, ClaimedReads | None]:
    """What one finish's row says (see :func:`finish_step`); raises for a finish the store
    refuses (no such step, one still pending)."""
    if row is None or not row["applied"]:
        _explain_not_applied(key, None if row is None else row["step_state"])
        return StepTransition(applied=False), None
    ready = tuple(
        sorted((to_step(s) for s in row["ready_steps"]), key=lambda s: (s.asset, s.partition))
    )
    status: RunStatus | None = row["run_status"]
    if row["claimed"] is None:
        return StepTransition(applied=True, ready=ready, run_status=status), None
    mats = {m["id"]: to_materialization(m) for m in row["claimed_input_mats"] or ()}
    inputs = tuple(
        (dep, mats.get(dep.materialization_id) if dep.materialization_id else None)
        for dep in (to_step(d) for d in row["claimed_inputs"] or ())
    )
    values = {v[0]: tuple(v[1:]) for v in row["claimed_values"]} if prefetched else {}
    transition = StepTransition(
        applied=True, ready=ready, run_status=status, claimed=to_step(row["claimed"])
    )
    return transition, ClaimedReads(inputs=inputs, values=values)


@dataclasses.dataclass(frozen=True, slots=True)
class BatchItem:
    """One finish of :func:`finish_steps`: the arguments :func:`finish_step` takes."""

    key: dict[str, str]
    params: dict[str, object]
    staged: Sequence[StagedValue]
    prefetch: Mapping[str, Sequence[str]] | None


async def finish_steps(
    db: Connections, sql: Sql, items: Sequence[BatchItem]
) -> list[tuple[StepTransition, ClaimedReads | None] | Exception]:
    """Several :func:`finish_step` calls in one transaction, then each of their runs
    settled once (``settle_run``). Locks are taken in one global order, so concurrent
    batches (and single finishes) cannot deadlock: first the pending dependents of every
    finish, by (run, asset, partition); then each finish with ``p_settle`` false, which
    leaves the run's row alone; each run with an applied finish settled after its own
    finishes, by ``run_id``. A run's new status, if it changed, goes to its last applied
    finish in the batch (so ``run.finished`` is announced once).

    Finishes of one statement shape (see :func:`_finish_statement`; a pack's finishes,
    each with its staged value) are one round trip: the calls pipelined (asyncpg's
    ``fetchmany``: one implicit transaction), ordered by run, the first taking the
    dependents' lock and each run's last settling it (migration 0011). A batch of several
    shapes runs them in an explicit transaction: lock, each shape's calls, settle.
    The caller retries a deadlock victim (nothing of the batch was applied).

    A finish refused with an error (no such step, one still pending) comes back as that
    error; the others are unaffected.
    """
    prepared = [
        _finish_statement({**item.params, "settle": False}, item.staged, item.prefetch)
        for item in items
    ]
    if len({template for template, _ in prepared}) == 1:
        rows, settled = await _finish_pipelined(db, sql, items, prepared)
    else:
        async with db.connection() as conn, conn.transaction():
            rows, settled = await _finish_in_transaction(conn, sql, items, prepared)
    out: list[tuple[StepTransition, ClaimedReads | None] | Exception] = []
    last: dict[str, int] = {}  # run -> index of its last applied finish
    for item, row in zip(items, rows, strict=True):
        try:
            transition, reads = _transition(item.key, row, bool(item.prefetch))
        except (StorageError, UsageError) as exc:
            out.append(exc)
            continue
        if transition.run_status is not None:  # a settling call's: placed below
            transition = dataclasses.replace(transition, run_status=None)
        out.append((transition, reads))
        if transition.applied:
            last[item.key["r"]] = len(out) - 1
    for run, status in settled.items():
        if status is not None and run in last:
            done = out[last[run]]
            assert not isinstance(done, Exception)
            out[last[run]] = (dataclasses.replace(done[0], run_status=status), done[1])
    return out


async def _finish_pipelined(
    db: Connections,
    sql: Sql,
    items: Sequence[BatchItem],
    prepared: Sequence[tuple[str, dict[str, object]]],
) -> tuple[list[Any], dict[str, RunStatus | None]]:
    """A batch of one shape in one round trip: each finish's row (in ``items``' order)
    and each run's status as settled by its last call."""
    order = sorted(range(len(items)), key=lambda i: items[i].key["r"])  # stable: by run
    keys = [item.key for item in items]
    calls: list[dict[str, object]] = []
    for position, index in enumerate(order):
        params = prepared[index][1]  # (a fresh dict per finish: set in place)
        if position == 0:
            params.update(lock_runs=[k["r"] for k in keys], lock_assets=[k["a"] for k in keys],
                          lock_parts=[k["p"] for k in keys])  # fmt: skip
        following = order[position + 1] if position + 1 < len(order) else None
        params["settle_run"] = following is None or keys[following]["r"] != keys[index]["r"]
        calls.append(params)
    stmt = sql(prepared[0][0])
    got = await db.fetchmany(stmt.sql, [stmt.args(params) for params in calls])
    rows: list[Any] = [None] * len(items)
    settled: dict[str, RunStatus | None] = {}
    for index, params, row in zip(order, calls, got, strict=True):
        rows[index] = row
        if params["settle_run"]:
            settled[keys[index]["r"]] = row["run_status"]
    return rows, settled


async def _finish_in_transaction(
    conn: asyncpg.Connection,
    sql: Sql,
    items: Sequence[BatchItem],
    prepared: Sequence[tuple[str, dict[str, object]]],
) -> tuple[list[Any], dict[str, RunStatus | None]]:
    """A batch of several shapes, in the caller's transaction: the dependents' lock, the
    finishes of each shape together (in the order given within each shape), then every
    run with an applied finish settled, by ``run_id``."""
    keys = [item.key for item in items]
    await sql(_LOCK_DEPENDENTS).fetch(conn, {
        "runs": [k["r"] for k in keys], "assets": [k["a"] for k in keys],
        "parts": [k["p"] for k in keys],
    })  # fmt: skip
    shapes: dict[str, list[tuple[int, dict[str, object]]]] = {}
    for index, (template, params) in enumerate(prepared):
        shapes.setdefault(template, []).append((index, params))
    rows: list[Any] = [None] * len(items)
    for template, group in shapes.items():
        stmt = sql(template)
        got = await conn.fetchmany(stmt.sql, [stmt.args(params) for _, params in group])
        for (index, _), row in zip(group, got, strict=True):
            rows[index] = row
    runs = sorted({key["r"] for key, row in zip(keys, rows, strict=True) if row["applied"]})
    settled = await sql(_SETTLE_MANY).fetch(conn, {"runs": runs}) if runs else []
    return rows, {run: row["run_status"] for run, row in zip(runs, settled, strict=True)}


@functools.lru_cache(maxsize=64)
def _renamed(statement: str, prefix: str) -> str:
    """``statement`` with every ``:name`` parameter renamed ``:<prefix>name``."""
    return PARAM.sub(lambda m: f":{prefix}{m.group(1)}", statement)


def _explain_not_applied(key: dict[str, str], state: str | None) -> None:
    """Raise for a step that does not exist or cannot finish yet; return if it is done."""
    rules.check_finishable(state, key["r"], key["a"], key["p"])
