-- finish_step as revision 0011 creates it: revision 0010's function with four more arguments,
-- so a batch of finishes of one statement shape is one pipelined round trip (asyncpg's
-- fetchmany: every call bound and executed, then one Sync, so one implicit transaction, all
-- applied or none) instead of five (BEGIN, lock, finishes, settle, COMMIT):
-- * p_lock_runs, p_lock_assets, p_lock_parts (default NULL): the keys of every finish of the
--   batch, given to its first call only, which locks their pending dependents first, in one
--   global (run, asset, partition) order (what the batch's separate lock statement did; the
--   same per-key statement, so a cached generic plan cannot scan the tables);
-- * p_settle_run (default false): the batch's last call for each run (the calls ordered by
--   run) settles that run with settle_run once its own finish is done, applied or not (a
--   refused duplicate must not leave the run of an earlier applied finish unsettled), and
--   returns what settle_run said as run_status. Run rows are so locked in run_id order, after
--   every dependent, as before.
-- And a finish without upstream records no longer runs the (empty) lineage insert.
-- Otherwise the function is unchanged; called without the new arguments it is 0010's.
-- {schema} stands for the FlowStone schema (a validated, quoted identifier); the migration
-- substitutes it and runs this file as one statement. Released files never change: a new
-- version of the function is a new file, created by a new revision.
CREATE FUNCTION {schema}.finish_step(
    p_run text, p_asset text, p_part text, p_state text, p_error text, p_from text[],
    p_detail jsonb, p_now timestamptz,
    p_mat_id text, p_m_pipeline text, p_m_state text, p_m_io text, p_m_loc text,
    p_m_attempt integer, p_m_started timestamptz, p_m_finished timestamptz, p_m_error text,
    p_m_up text[], p_m_meta jsonb,
    p_ap_pipeline text, p_ap_message text, p_ap_status text, p_ap_created timestamptz,
    p_ap_expires timestamptz, p_ap_io text, p_ap_loc text, p_ap_meta jsonb,
    p_g_token text, p_g_pipeline text, p_g_status text, p_g_created timestamptz,
    p_g_expires timestamptz, p_g_payload jsonb, p_g_meta jsonb,
    p_claim_owner text, p_claim_lease timestamptz,
    p_fence_owner text, p_fence_attempt integer, p_settle boolean DEFAULT true,
    p_lock_runs text[] DEFAULT NULL, p_lock_assets text[] DEFAULT NULL,
    p_lock_parts text[] DEFAULT NULL, p_settle_run boolean DEFAULT false,
    OUT applied boolean, OUT step_state text, OUT run_status text, OUT ready_steps {schema}.steps[],
    OUT claimed {schema}.steps, OUT claimed_inputs {schema}.steps[],
    OUT claimed_input_mats {schema}.materializations[]
) LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_claimed boolean := false;
    v_now timestamptz := now();
    v_mat text;
BEGIN
    IF p_lock_runs IS NOT NULL THEN
        -- A batch's first call: the pending dependents of all its finishes, each key looked
        -- up on its own (a generic plan cannot scan), locked in (run, asset, partition) order.
        PERFORM 1 FROM (SELECT DISTINCT k.r, d.asset, d.partition
                          FROM unnest(p_lock_runs, p_lock_assets, p_lock_parts) AS k(r, a, p)
                         CROSS JOIN LATERAL (
                               SELECT e.asset, e.partition FROM {schema}.edges e
                                WHERE e.run_id = k.r AND e.dep_asset = k.a
                                  AND e.dep_partition = k.p OFFSET 0) AS d
                         ORDER BY 1, 2, 3) AS t
          CROSS JOIN LATERAL (
                SELECT 1 FROM {schema}.steps s
                 WHERE s.run_id = t.r AND s.asset = t.asset AND s.partition = t.partition
                   AND s.state = 'pending' FOR UPDATE) AS l;
    END IF;
    UPDATE {schema}.steps SET state = p_state, error = p_error, owner = NULL,
           lease_expires_at = NULL, materialization_id = COALESCE(p_mat_id, materialization_id),
           updated_at = v_now
     WHERE run_id = p_run AND asset = p_asset AND partition = p_part AND state = ANY(p_from)
       AND (p_fence_owner IS NULL
            OR (state IN ('running', 'waiting') AND owner = p_fence_owner
                AND attempt = p_fence_attempt));
    IF NOT FOUND THEN
        applied := false;
        SELECT st.state INTO step_state FROM {schema}.steps st
         WHERE st.run_id = p_run AND st.asset = p_asset AND st.partition = p_part;
        IF p_settle_run THEN
            run_status := {schema}.settle_run(p_run);
        END IF;
        RETURN;
    END IF;
    applied := true;
    step_state := p_state;
    ready_steps := '{}';

    INSERT INTO {schema}.audit (run_id, at, kind, asset, partition, detail)
    VALUES (p_run, v_now, 'step_' || p_state, p_asset, p_part, p_detail);

    IF p_mat_id IS NOT NULL THEN
        INSERT INTO {schema}.materializations (id, pipeline, run_id, asset, partition, state,
               io_manager, location, attempt, started_at, finished_at, error, upstream, metadata)
        VALUES (p_mat_id, p_m_pipeline, p_run, p_asset, p_part, p_m_state, p_m_io, p_m_loc,
                p_m_attempt, p_m_started, p_m_finished, p_m_error, p_m_up, p_m_meta)
        ON CONFLICT (run_id, asset, partition) DO UPDATE SET seq = DEFAULT,
               pipeline = EXCLUDED.pipeline, state = EXCLUDED.state,
               io_manager = EXCLUDED.io_manager, location = EXCLUDED.location,
               attempt = EXCLUDED.attempt, started_at = EXCLUDED.started_at,
               finished_at = EXCLUDED.finished_at, error = EXCLUDED.error,
               upstream = EXCLUDED.upstream, metadata = EXCLUDED.metadata, invalidated = false
        RETURNING id INTO v_mat;
        IF v_mat IS DISTINCT FROM p_mat_id THEN  -- finished again: the record keeps its id
            UPDATE {schema}.steps SET materialization_id = v_mat
             WHERE run_id = p_run AND asset = p_asset AND partition = p_part;
        END IF;
        IF cardinality(p_m_up) > 0 THEN  -- (a root asset's finish skips the statement)
            INSERT INTO {schema}.lineage (upstream_id, downstream_id)
            SELECT u.id, v_mat FROM unnest(p_m_up) AS u(id) ON CONFLICT DO NOTHING;
        END IF;
    END IF;

    IF p_state = 'waiting' THEN
        IF p_ap_pipeline IS NOT NULL THEN
            INSERT INTO {schema}.approvals (pipeline, run_id, asset, partition, message, status,
                   created_at, expires_at, io_manager, location, metadata)
            VALUES (p_ap_pipeline, p_run, p_asset, p_part, p_ap_message, p_ap_status,
                    v_now, v_now + (p_ap_expires - p_ap_created), p_ap_io, p_ap_loc, p_ap_meta);
        END IF;
        IF p_g_token IS NOT NULL THEN
            INSERT INTO {schema}.gates (token_hash, pipeline, run_id, asset, partition, status,
                   created_at, expires_at, payload, metadata)
            VALUES (p_g_token, p_g_pipeline, p_run, p_asset, p_part, p_g_status, v_now,
                    v_now + (p_g_expires - p_g_created), p_g_payload, p_g_meta)
            ON CONFLICT (token_hash) DO NOTHING;
        END IF;
    ELSE
        -- Lock the pending dependents in a fixed order, then release one dependency each.
        WITH d AS (
            SELECT s.asset, s.partition FROM {schema}.edges e JOIN {schema}.steps s
                ON s.run_id = e.run_id AND s.asset = e.asset AND s.partition = e.partition
             WHERE e.run_id = p_run AND e.dep_asset = p_asset AND e.dep_partition = p_part
               AND s.state = 'pending'
             ORDER BY s.asset, s.partition FOR UPDATE OF s
        ), u AS (
            UPDATE {schema}.steps s SET remaining_deps = s.remaining_deps - 1,
                   state = CASE WHEN s.remaining_deps = 1 THEN 'ready' ELSE s.state END,
                   updated_at = v_now
              FROM d
             WHERE s.run_id = p_run AND s.asset = d.asset AND s.partition = d.partition
               AND s.state = 'pending'
            RETURNING s AS step
        )
        SELECT COALESCE(array_agg(u.step) FILTER (WHERE (u.step).state = 'ready'), '{}')
          INTO ready_steps FROM u;
    END IF;

    IF p_claim_owner IS NOT NULL AND cardinality(ready_steps) > 0 THEN
        UPDATE {schema}.steps s SET state = 'running', attempt = s.attempt + 1,
               owner = p_claim_owner, lease_expires_at = v_now + (p_claim_lease - p_now),
               not_before = NULL, updated_at = v_now
         WHERE s.run_id = p_run AND s.state = 'ready'
           AND (s.asset, s.partition) = (
               SELECT r.asset, r.partition FROM unnest(ready_steps) AS r
                WHERE r.not_before IS NULL OR r.not_before <= v_now
                ORDER BY r.asset, r.partition LIMIT 1)
           AND EXISTS (SELECT 1 FROM {schema}.runs WHERE run_id = p_run AND status <> 'cancelled')
        RETURNING s.* INTO claimed;
        IF FOUND THEN
            v_claimed := true;
            ready_steps := ARRAY(SELECT r FROM unnest(ready_steps) AS r
                                 WHERE (r.asset, r.partition)
                                       IS DISTINCT FROM (claimed.asset, claimed.partition));
            -- what the claimed step reads first: its dependencies and their records
            SELECT COALESCE(array_agg(d), '{}'),
                   COALESCE(array_agg(m) FILTER (WHERE m.id IS NOT NULL), '{}')
              INTO claimed_inputs, claimed_input_mats
              FROM {schema}.edges e
              JOIN {schema}.steps d ON d.run_id = e.run_id AND d.asset = e.dep_asset
                              AND d.partition = e.dep_partition
              LEFT JOIN {schema}.materializations m ON m.id = d.materialization_id
             WHERE e.run_id = p_run AND e.asset = claimed.asset
               AND e.partition = claimed.partition;
        END IF;
    END IF;

    IF NOT p_settle THEN  -- a batch: each run settled once, by its last call
        IF p_settle_run THEN
            run_status := {schema}.settle_run(p_run);
        END IF;
        RETURN;
    END IF;
    IF cardinality(ready_steps) > 0 OR v_claimed THEN
        -- Something is runnable, so the run is running; touch the row only if it says not.
        UPDATE {schema}.runs SET status = 'running', updated_at = v_now
         WHERE run_id = p_run AND status NOT IN ('running', 'cancelled')
        RETURNING status INTO run_status;
        RETURN;
    END IF;
    run_status := {schema}.settle_run(p_run);
END
$fn$
