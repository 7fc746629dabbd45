"""``finish_step`` as one server-side function: the whole transaction in one round trip.

``RunStore.finish_step`` used to send five or six statements (step transition with audit,
materialization and lineage; approval or gate; dependents; run row lock; status recompute)
inside BEGIN ... COMMIT: seven round trips. The function does the same statements, in the
same order, inside the caller's single-statement transaction:

* the step moves only if its state is in ``p_from`` (exactly once: a concurrent or
  redelivered finisher re-checks the committed row and matches nothing); when it does not
  move, ``applied`` is false and ``step_state`` tells the caller why (NULL: no such step);
* dependents are locked in (asset, partition) order, then decremented; those reaching zero
  become ``ready`` and are returned (to this caller only);
* the run row is locked before the status is recomputed by a *later statement*. A PL/pgSQL
  function is VOLATILE, so under READ COMMITTED each statement takes a fresh snapshot: the
  recompute sees every finisher that committed before we got the lock, exactly as the
  multi-statement transaction did.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SIGNATURE = """
    p_run text, p_asset text, p_part text, p_state text, p_error text, p_from text[],
    p_detail jsonb, p_now timestamptz,
    p_mat_id text, p_m_pipeline text, p_m_state text, p_m_io text, p_m_loc text,
    p_m_attempt integer, p_m_started timestamptz, p_m_finished timestamptz, p_m_error text,
    p_m_up text[], p_m_meta jsonb,
    p_ap_pipeline text, p_ap_message text, p_ap_status text, p_ap_created timestamptz,
    p_ap_expires timestamptz, p_ap_io text, p_ap_loc text, p_ap_meta jsonb,
    p_g_token text, p_g_pipeline text, p_g_status text, p_g_created timestamptz,
    p_g_expires timestamptz, p_g_payload jsonb, p_g_meta jsonb"""

_ARG_TYPES = (
    "text, text, text, text, text, text[], jsonb, timestamptz, text, text, text, text, text, "
    "integer, timestamptz, timestamptz, text, text[], jsonb, text, text, text, timestamptz, "
    "timestamptz, text, text, jsonb, text, text, text, timestamptz, timestamptz, jsonb, jsonb"
)

_FUNCTION = """
CREATE FUNCTION {s}.finish_step({signature},
    OUT applied boolean, OUT step_state text, OUT run_status text, OUT ready_steps {s}.steps[]
) LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_before text;
    v_after text;
BEGIN
    UPDATE {s}.steps SET state = p_state, error = p_error, owner = NULL,
           lease_expires_at = NULL, materialization_id = COALESCE(p_mat_id, materialization_id),
           updated_at = p_now
     WHERE run_id = p_run AND asset = p_asset AND partition = p_part AND state = ANY(p_from);
    IF NOT FOUND THEN
        applied := false;
        SELECT st.state INTO step_state FROM {s}.steps st
         WHERE st.run_id = p_run AND st.asset = p_asset AND st.partition = p_part;
        RETURN;
    END IF;
    applied := true;
    step_state := p_state;
    ready_steps := '{{}}';

    INSERT INTO {s}.audit (run_id, at, kind, asset, partition, detail)
    VALUES (p_run, p_now, 'step_' || p_state, p_asset, p_part, p_detail);

    IF p_mat_id IS NOT NULL THEN
        INSERT INTO {s}.materializations (id, pipeline, run_id, asset, partition, state,
               io_manager, location, attempt, started_at, finished_at, error, upstream, metadata)
        VALUES (p_mat_id, p_m_pipeline, p_run, p_asset, p_part, p_m_state, p_m_io, p_m_loc,
                p_m_attempt, p_m_started, p_m_finished, p_m_error, p_m_up, p_m_meta)
        ON CONFLICT (run_id, asset, partition) DO UPDATE SET id = EXCLUDED.id, seq = DEFAULT,
               pipeline = EXCLUDED.pipeline, state = EXCLUDED.state,
               io_manager = EXCLUDED.io_manager, location = EXCLUDED.location,
               attempt = EXCLUDED.attempt, started_at = EXCLUDED.started_at,
               finished_at = EXCLUDED.finished_at, error = EXCLUDED.error,
               upstream = EXCLUDED.upstream, metadata = EXCLUDED.metadata, invalidated = false;
        INSERT INTO {s}.lineage (upstream_id, downstream_id)
        SELECT u.id, p_mat_id FROM unnest(p_m_up) AS u(id) ON CONFLICT DO NOTHING;
    END IF;

    IF p_state = 'waiting' THEN
        IF p_ap_pipeline IS NOT NULL THEN
            INSERT INTO {s}.approvals (pipeline, run_id, asset, partition, message, status,
                   created_at, expires_at, io_manager, location, metadata)
            VALUES (p_ap_pipeline, p_run, p_asset, p_part, p_ap_message, p_ap_status,
                    p_ap_created, p_ap_expires, p_ap_io, p_ap_loc, p_ap_meta);
        END IF;
        IF p_g_token IS NOT NULL THEN
            INSERT INTO {s}.gates (token_hash, pipeline, run_id, asset, partition, status,
                   created_at, expires_at, payload, metadata)
            VALUES (p_g_token, p_g_pipeline, p_run, p_asset, p_part, p_g_status, p_g_created,
                    p_g_expires, p_g_payload, p_g_meta)
            ON CONFLICT (token_hash) DO NOTHING;
        END IF;
    ELSE
        -- Lock the pending dependents in a fixed order, then release one dependency each.
        WITH d AS (
            SELECT s.asset, s.partition FROM {s}.edges e JOIN {s}.steps s
                ON s.run_id = e.run_id AND s.asset = e.asset AND s.partition = e.partition
             WHERE e.run_id = p_run AND e.dep_asset = p_asset AND e.dep_partition = p_part
               AND s.state = 'pending'
             ORDER BY s.asset, s.partition FOR UPDATE OF s
        ), u AS (
            UPDATE {s}.steps s SET remaining_deps = s.remaining_deps - 1,
                   state = CASE WHEN s.remaining_deps = 1 THEN 'ready' ELSE s.state END,
                   updated_at = p_now
              FROM d
             WHERE s.run_id = p_run AND s.asset = d.asset AND s.partition = d.partition
               AND s.state = 'pending'
            RETURNING s AS step
        )
        SELECT COALESCE(array_agg(u.step) FILTER (WHERE (u.step).state = 'ready'), '{{}}')
          INTO ready_steps FROM u;
    END IF;

    IF cardinality(ready_steps) > 0 THEN
        -- Something is runnable, so the run is running; touch the row only if it says not.
        UPDATE {s}.runs SET status = 'running', updated_at = p_now
         WHERE run_id = p_run AND status NOT IN ('running', 'cancelled')
        RETURNING status INTO run_status;
        RETURN;
    END IF;
    -- Lock first, then recompute in a new statement (fresh snapshot), see the docstring.
    SELECT r.status INTO v_before FROM {s}.runs r WHERE r.run_id = p_run FOR UPDATE;
    UPDATE {s}.runs SET updated_at = p_now, status = CASE
        WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE run_id = p_run
                     AND state IN ('ready', 'queued', 'running')) THEN 'running'
        WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE run_id = p_run AND state = 'waiting')
            THEN 'waiting'
        WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE run_id = p_run
                     AND state IN ('failed', 'upstream_failed')) THEN 'failed'
        WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE run_id = p_run AND state = 'cancelled')
            THEN 'cancelled'
        ELSE 'succeeded' END
     WHERE run_id = p_run AND status <> 'cancelled'
    RETURNING status INTO v_after;
    run_status := CASE WHEN v_after IS DISTINCT FROM v_before THEN v_after END;
END
$fn$
"""


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(_FUNCTION.format(s=s, signature=_SIGNATURE))


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"DROP FUNCTION IF EXISTS {s}.finish_step({_ARG_TYPES})")
