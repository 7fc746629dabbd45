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

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from flowstone.errors import RunNotFoundError, StorageError, UsageError
from flowstone.records import (
    RunRecord,
    RunStatus,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)
from flowstone_io_postgres._rows import STEP_COLS, to_step
from flowstone_io_postgres._sql import Sql, dump_json

__all__ = [
    "cancel_run",
    "claim_step",
    "create_run",
    "finish_step",
    "renew_lease",
    "reopen_run",
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
            :updated_at, :error, CAST(:tags AS jsonb))
    RETURNING run_id
), st AS (
    INSERT INTO {s}.steps (run_id, asset, partition, ordinal, state, remaining_deps,
                           materialization_id, updated_at)
    SELECT r.run_id, u.asset, u.partition, u.ordinal, u.state, u.remaining, u.mat, :now
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
    SELECT r.run_id, :now, 'run_created', CAST(:audit AS jsonb) FROM r
)
SELECT run_id FROM r
"""


async def create_run(
    conn: AsyncConnection, q: Sql, run: RunRecord, steps: Sequence[StepSpec], now: datetime
) -> tuple[StepRecord, ...]:
    """Insert run, steps and edges in one statement; return the ready steps."""
    keys = {(s.asset, s.partition): s for s in steps}
    if len(keys) != len(steps):
        raise UsageError(f"run {run.run_id!r}: the plan lists the same (asset, partition) twice")
    assets, partitions, states, remaining, mats = [], [], [], [], []
    edges: set[tuple[str, str, str, str]] = set()
    ready: list[StepRecord] = []
    for spec in steps:
        deps = set(spec.deps)
        missing = sorted(d for d in deps if d not in keys)
        if missing:
            raise UsageError(
                f"run {run.run_id!r}: step {spec.asset!r} depends on "
                + ", ".join(f"{a!r} (partition {p!r})" for a, p in missing)
                + ", which the plan does not contain. Add the dependency to the plan "
                "(as a reused 'succeeded' step if its value already exists)."
            )
        edges.update((da, dp, spec.asset, spec.partition) for da, dp in deps)
        waiting_on = sum(1 for d in deps if keys[d].state != "succeeded")
        state: str = spec.state
        if state == "pending" and waiting_on == 0:
            state = "ready"
        assets.append(spec.asset)
        partitions.append(spec.partition)
        states.append(state)
        remaining.append(0 if spec.state == "succeeded" else waiting_on)
        mats.append(spec.reused_materialization_id)
        if state == "ready":
            ready.append(StepRecord(run.run_id, spec.asset, spec.partition, "ready", 0,
                                    updated_at=now))  # fmt: skip
    runnable = any(s == "pending" for s in states) or bool(ready)
    ordered = sorted(edges)
    await conn.execute(
        q(_CREATE),
        {
            "run_id": run.run_id,
            "pipeline": run.pipeline,
            "targets": list(run.targets),
            "partition": run.partition,
            "status": "running" if runnable else "succeeded",
            "created_at": run.created_at,
            "updated_at": run.updated_at,
            "error": run.error,
            "tags": dump_json(dict(run.tags), what="run tags"),
            "now": now,
            "audit": dump_json({"steps": len(assets), "ready": len(ready)}, what="audit detail"),
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
    return tuple(ready)


async def cancel_run(conn: AsyncConnection, q: Sql, run_id: str, now: datetime) -> bool:
    status = await conn.scalar(q("SELECT status FROM {s}.runs WHERE run_id = :r"), {"r": run_id})
    if status is None:
        raise RunNotFoundError(f"no run {run_id!r} in the run store; check the run id")
    if status in ("succeeded", "failed", "cancelled"):
        return False
    # Steps first (in key order), then the run row: the same order finish_step locks in.
    await conn.execute(
        q(
            "WITH l AS (SELECT asset, partition FROM {s}.steps WHERE run_id = :r AND state NOT IN "
            + _TERMINAL
            + " ORDER BY asset, partition FOR UPDATE) "
            "UPDATE {s}.steps s SET state = 'cancelled', owner = NULL, lease_expires_at = NULL, "
            "updated_at = :now FROM l WHERE s.run_id = :r AND s.asset = l.asset "
            "AND s.partition = l.partition AND s.state NOT IN " + _TERMINAL
        ),
        {"r": run_id, "now": now},
    )
    done = await conn.scalar(
        q(
            "UPDATE {s}.runs SET status = 'cancelled', updated_at = :now WHERE run_id = :r "
            "AND status NOT IN ('succeeded','failed','cancelled') RETURNING run_id"
        ),
        {"r": run_id, "now": now},
    )
    return done is not None


async def reopen_run(
    conn: AsyncConnection, q: Sql, run_id: str, now: datetime
) -> tuple[StepRecord, ...]:
    status = await conn.scalar(
        q("SELECT status FROM {s}.runs WHERE run_id = :r FOR UPDATE"), {"r": run_id}
    )
    if status is None:
        raise RunNotFoundError(f"no run {run_id!r} in the run store; check the run id")
    if status not in ("failed", "cancelled"):
        return ()
    p = {"r": run_id, "now": now}
    await conn.execute(
        q(
            "UPDATE {s}.steps SET state = 'pending', attempt = 0, owner = NULL, "
            "lease_expires_at = NULL, not_before = NULL, error = NULL, materialization_id = NULL, "
            "updated_at = :now WHERE run_id = :r "
            "AND state IN ('failed','upstream_failed','cancelled')"
        ),
        p,
    )
    await conn.execute(
        q(
            "UPDATE {s}.steps s SET remaining_deps = (SELECT count(*) FROM {s}.edges e "
            "JOIN {s}.steps d ON d.run_id = e.run_id AND d.asset = e.dep_asset "
            "AND d.partition = e.dep_partition WHERE e.run_id = s.run_id AND e.asset = s.asset "
            "AND e.partition = s.partition AND d.state NOT IN " + _TERMINAL + ") "
            "WHERE s.run_id = :r AND s.state = 'pending'"
        ),
        {"r": run_id},
    )
    rows = await conn.execute(
        q(
            "UPDATE {s}.steps SET state = 'ready', updated_at = :now WHERE run_id = :r "
            "AND state = 'pending' AND remaining_deps = 0 RETURNING " + STEP_COLS
        ),
        p,
    )
    ready = tuple(sorted((to_step(r) for r in rows), key=lambda s: (s.asset, s.partition)))
    await conn.execute(
        q("UPDATE {s}.runs SET status = 'running', error = NULL, updated_at = :now "
          "WHERE run_id = :r"),
        p,
    )  # fmt: skip
    return ready


_CLAIM = (
    "UPDATE {s}.steps SET state = 'running', attempt = attempt + 1, owner = :owner, "
    "lease_expires_at = :lease, not_before = NULL, updated_at = :now "
    "WHERE run_id = :r AND asset = :a AND partition = :p AND ("
    "(state = 'ready' AND (not_before IS NULL OR not_before <= :now)) "
    "OR (state = 'running' AND lease_expires_at < :now)) "
    "AND EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = :r AND status <> 'cancelled') "
    "RETURNING " + STEP_COLS
)


async def claim_step(
    conn: AsyncConnection, q: Sql, key: dict[str, str], owner: str, lease: float, now: datetime
) -> StepRecord | None:
    row = (
        await conn.execute(
            q(_CLAIM), {**key, "owner": owner, "lease": now + timedelta(seconds=lease), "now": now}
        )
    ).first()
    return None if row is None else to_step(row)


async def renew_lease(
    conn: AsyncConnection, q: Sql, key: dict[str, str], owner: str, lease: float, now: datetime
) -> bool:
    row = (
        await conn.execute(
            q(
                "UPDATE {s}.steps SET lease_expires_at = :lease WHERE run_id = :r AND asset = :a "
                "AND partition = :p AND state = 'running' AND owner = :owner RETURNING 1"
            ),
            {**key, "owner": owner, "lease": now + timedelta(seconds=lease)},
        )
    ).first()
    return row is not None


async def retry_step(
    conn: AsyncConnection,
    q: Sql,
    key: dict[str, str],
    not_before: datetime,
    error: str,
    now: datetime,
) -> bool:
    row = (
        await conn.execute(
            q(
                "UPDATE {s}.steps SET state = 'ready', not_before = :nb, error = :err, "
                "owner = NULL, lease_expires_at = NULL, updated_at = :now WHERE run_id = :r "
                "AND asset = :a AND partition = :p AND state = 'running' RETURNING 1"
            ),
            {**key, "nb": not_before, "err": error, "now": now},
        )
    ).first()
    return row is not None


_STALE = (
    "SELECT " + ", ".join("s." + c.strip() for c in STEP_COLS.split(",")) + " FROM {s}.steps s "
    "JOIN {s}.runs r ON r.run_id = s.run_id AND r.status = 'running' "
    "WHERE (s.state = 'ready' AND GREATEST(s.updated_at, COALESCE(s.not_before, s.updated_at)) "
    "<= :cutoff AND (s.not_before IS NULL OR s.not_before <= :now)) "
    "OR (s.state = 'running' AND s.lease_expires_at < :now) ORDER BY s.updated_at"
)


async def stale_steps(
    conn: AsyncConnection, q: Sql, now: datetime, ready_for: float
) -> list[StepRecord]:
    rows = await conn.execute(q(_STALE), {"now": now, "cutoff": now - timedelta(seconds=ready_for)})
    return [to_step(r) for r in rows]


_STEP_UPDATE = (
    "UPDATE {s}.steps SET state = :state, error = :error, owner = NULL, lease_expires_at = NULL, "
    "materialization_id = COALESCE(CAST(:mat_id AS text), materialization_id), updated_at = :now "
    "WHERE run_id = :r AND asset = :a AND partition = :p AND state = ANY(CAST(:from AS text[])) "
    "RETURNING attempt"
)
_AUDIT = (
    "au AS (INSERT INTO {s}.audit (run_id, at, kind, asset, partition, detail) "
    "SELECT :r, :now, :kind, :a, :p, CAST(:detail AS jsonb) FROM st)"
)
_FINISH = "WITH st AS (" + _STEP_UPDATE + "), " + _AUDIT + " SELECT attempt FROM st"
_FINISH_WITH_MAT = (
    "WITH st AS (" + _STEP_UPDATE + "), " + _AUDIT + ", m AS ("
    "INSERT INTO {s}.materializations (id, pipeline, run_id, asset, partition, state, "
    "io_manager, location, attempt, started_at, finished_at, error, upstream, metadata) "
    "SELECT :mat_id, :m_pipeline, :r, :a, :p, :m_state, :m_io, :m_loc, :m_attempt, :m_started, "
    ":m_finished, :m_error, CAST(:m_up AS text[]), CAST(:m_meta AS jsonb) FROM st "
    "ON CONFLICT (run_id, asset, partition) DO UPDATE SET id = EXCLUDED.id, seq = DEFAULT, "
    "pipeline = EXCLUDED.pipeline, state = EXCLUDED.state, io_manager = EXCLUDED.io_manager, "
    "location = EXCLUDED.location, attempt = EXCLUDED.attempt, started_at = EXCLUDED.started_at, "
    "finished_at = EXCLUDED.finished_at, error = EXCLUDED.error, upstream = EXCLUDED.upstream, "
    "metadata = EXCLUDED.metadata, invalidated = false RETURNING id), l AS ("
    "INSERT INTO {s}.lineage (upstream_id, downstream_id) SELECT u.id, m.id FROM m, "
    "unnest(CAST(:m_up AS text[])) AS u(id) ON CONFLICT DO NOTHING) "
    "SELECT attempt FROM st"
)
# A 'waiting' outcome is accepted only once: a redelivered one must not wait twice.
_FROM_WAITING = ["ready", "queued", "running"]
_FROM_TERMINAL = ["ready", "queued", "running", "waiting"]

_RELEASE = (
    "WITH d AS (SELECT s.asset, s.partition FROM {s}.edges e JOIN {s}.steps s "
    "ON s.run_id = e.run_id AND s.asset = e.asset AND s.partition = e.partition "
    "WHERE e.run_id = :r AND e.dep_asset = :a AND e.dep_partition = :p AND s.state = 'pending' "
    "ORDER BY s.asset, s.partition FOR UPDATE OF s) "
    "UPDATE {s}.steps s SET remaining_deps = s.remaining_deps - 1, state = CASE WHEN "
    "s.remaining_deps = 1 THEN 'ready' ELSE s.state END, updated_at = :now FROM d "
    "WHERE s.run_id = :r AND s.asset = d.asset AND s.partition = d.partition "
    "AND s.state = 'pending' RETURNING " + ", ".join("s." + c.strip() for c in STEP_COLS.split(","))
)

_RECOMPUTE = (
    "UPDATE {s}.runs SET updated_at = :now, status = CASE "
    "WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE run_id = :r "
    "AND state IN ('ready','queued','running')) THEN 'running' "
    "WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE run_id = :r AND state = 'waiting') THEN 'waiting' "
    "WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE run_id = :r "
    "AND state IN ('failed','upstream_failed')) THEN 'failed' "
    "WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE run_id = :r AND state = 'cancelled') "
    "THEN 'cancelled' ELSE 'succeeded' END "
    "WHERE run_id = :r AND status <> 'cancelled' RETURNING status"
)

_APPROVAL = (
    "INSERT INTO {s}.approvals (pipeline, run_id, asset, partition, message, status, created_at, "
    "expires_at, io_manager, location, metadata) VALUES (:pipeline, :r, :a, :p, :message, "
    ":status, :created_at, :expires_at, :io, :loc, CAST(:meta AS jsonb)) RETURNING id"
)

_GATE = (
    "INSERT INTO {s}.gates (token_hash, pipeline, run_id, asset, partition, status, created_at, "
    "expires_at, payload, metadata) VALUES (:th, :pipeline, :r, :a, :p, :status, :created_at, "
    ":expires_at, CAST(:payload AS jsonb), CAST(:meta AS jsonb)) "
    "ON CONFLICT (token_hash) DO NOTHING"
)


def _check_outcome(key: dict[str, str], outcome: StepOutcome) -> None:
    if outcome.state == "waiting" and (outcome.approval is None) == (outcome.gate is None):
        raise UsageError(
            f"step {key['a']!r} of run {key['r']!r}: a 'waiting' outcome needs exactly one of "
            "approval=... or gate=... (what is the step waiting for?)"
        )


async def finish_step(
    conn: AsyncConnection, q: Sql, key: dict[str, str], outcome: StepOutcome, now: datetime
) -> StepTransition:
    """See :meth:`flowstone.protocols.RunStore.finish_step`; runs inside one transaction."""
    _check_outcome(key, outcome)
    mat = outcome.materialization
    detail = {"error": outcome.error} if outcome.error else {}
    params: dict[str, object] = {
        **key,
        "state": outcome.state,
        "error": outcome.error,
        "mat_id": mat.id if mat else None,
        "from": _FROM_WAITING if outcome.state == "waiting" else _FROM_TERMINAL,
        "kind": f"step_{outcome.state}",
        "detail": dump_json(detail, what="audit detail"),
        "now": now,
    }
    if mat is None:
        row = (await conn.execute(q(_FINISH), params)).first()
    else:
        params.update(
            m_pipeline=mat.pipeline, m_state=mat.state, m_io=mat.io_manager, m_loc=mat.location,
            m_attempt=mat.attempt, m_started=mat.started_at, m_finished=mat.finished_at,
            m_error=mat.error, m_up=list(mat.upstream),
            m_meta=dump_json(dict(mat.metadata), what="materialization metadata"),
        )  # fmt: skip
        row = (await conn.execute(q(_FINISH_WITH_MAT), params)).first()
    if row is None:
        await _explain_not_applied(conn, q, key)
        return StepTransition(applied=False)

    ready: tuple[StepRecord, ...] = ()
    if outcome.state == "waiting":
        await _create_wait(conn, q, key, outcome)
    else:
        released = await conn.execute(q(_RELEASE), {**key, "now": now})
        ready = tuple(
            sorted(
                (s for s in map(to_step, released) if s.state == "ready"),
                key=lambda s: (s.asset, s.partition),
            )
        )
    if ready:
        # Something is runnable, so the run is running; touch the row only if it says otherwise.
        changed = await conn.scalar(
            q(
                "UPDATE {s}.runs SET status = 'running', updated_at = :now WHERE run_id = :r "
                "AND status NOT IN ('running','cancelled') RETURNING status"
            ),
            {"r": key["r"], "now": now},
        )
        return StepTransition(applied=True, ready=ready, run_status=changed)
    # Lock first, then recompute in a new statement (fresh snapshot), see module docstring.
    before = await conn.scalar(
        q("SELECT status FROM {s}.runs WHERE run_id = :r FOR UPDATE"), {"r": key["r"]}
    )
    status: RunStatus | None = await conn.scalar(q(_RECOMPUTE), {"r": key["r"], "now": now})
    return StepTransition(applied=True, run_status=None if status == before else status)


async def _explain_not_applied(conn: AsyncConnection, q: Sql, key: dict[str, str]) -> None:
    """Raise for a step that does not exist or cannot finish yet; return if it is done."""
    state = await conn.scalar(
        q("SELECT state FROM {s}.steps WHERE run_id = :r AND asset = :a AND partition = :p"), key
    )
    where = f"step {key['a']!r} (partition {key['p']!r}) of run {key['r']!r}"
    if state is None:
        raise StorageError(f"no {where} in the run store; check the run id and the plan")
    if state == "pending":
        raise UsageError(
            f"{where} is still pending: its dependencies have not finished, so it cannot "
            "finish. Only ready, running or waiting steps can finish."
        )


async def _create_wait(
    conn: AsyncConnection, q: Sql, key: dict[str, str], outcome: StepOutcome
) -> None:
    if outcome.approval is not None:
        a = outcome.approval
        await conn.execute(
            q(_APPROVAL),
            {
                **key, "pipeline": a.pipeline, "message": a.message, "status": a.status,
                "created_at": a.created_at, "expires_at": a.expires_at, "io": a.io_manager,
                "loc": a.location, "meta": dump_json(dict(a.metadata), what="approval metadata"),
            },
        )  # fmt: skip
    if outcome.gate is not None:
        g = outcome.gate
        await conn.execute(
            q(_GATE),
            {
                **key, "th": g.token_hash, "pipeline": g.pipeline, "status": g.status,
                "created_at": g.created_at, "expires_at": g.expires_at,
                "payload": None if g.payload is None else dump_json(g.payload, what="gate payload"),
                "meta": dump_json(dict(g.metadata), what="gate metadata"),
            },
        )  # fmt: skip
