-- settle_run as revision 0010 creates it: a run's status recomputed from its steps, the
-- statements finish_step (revision 0008) ran when a finish left nothing runnable, now shared
-- by finish_step and by a batch of finishes (finish_step with p_settle false), which settles
-- each of its runs once before committing. Returns the new status when it changed, else NULL.
-- The run row is locked first, then the status is recomputed in a new statement (a fresh
-- snapshot that sees every finish committed before the lock was granted): of two runners
-- finishing a run's last steps concurrently, the second to lock sees both. The lock is FOR
-- NO KEY UPDATE (what the UPDATE takes anyway): it excludes other settlers but not the
-- key-share lock a transaction takes on the run when it updates one of the run's steps a
-- second time (a batch releasing a join twice checks the steps' foreign key then); FOR
-- UPDATE made two such batches of one run wait for each other's key-share lock: deadlock.
-- {schema} stands for the FlowStone schema (a validated, quoted identifier); the migration
-- substitutes it and runs this file as one statement. Released files never change: a new
-- version of the function is a new file, created by a new revision.
CREATE FUNCTION {schema}.settle_run(p_run text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_before text;
    v_after text;
    v_now timestamptz := now();
BEGIN
    SELECT r.status INTO v_before FROM {schema}.runs r WHERE r.run_id = p_run FOR NO KEY UPDATE;
    UPDATE {schema}.runs SET updated_at = v_now, status = CASE
        WHEN EXISTS (SELECT 1 FROM {schema}.steps WHERE run_id = p_run
                     AND state IN ('ready', 'queued', 'running')) THEN 'running'
        WHEN EXISTS (SELECT 1 FROM {schema}.steps WHERE run_id = p_run AND state = 'waiting')
            THEN 'waiting'
        WHEN EXISTS (SELECT 1 FROM {schema}.steps WHERE run_id = p_run
                     AND state IN ('failed', 'upstream_failed')) THEN 'failed'
        WHEN EXISTS (SELECT 1 FROM {schema}.steps WHERE run_id = p_run AND state = 'cancelled')
            THEN 'cancelled'
        ELSE 'succeeded' END
     WHERE run_id = p_run AND status <> 'cancelled'
    RETURNING status INTO v_after;
    RETURN CASE WHEN v_after IS DISTINCT FROM v_before THEN v_after END;
END
$fn$
