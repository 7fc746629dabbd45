"""``finish_step`` can claim the step that runs next: a continuation without a round trip.

A worker that finished a step usually runs one of the dependents it made ready right away
(FlowStone's Celery workers do, see ``FLOWSTONE_INLINE_STEPS``). Claiming it took a second
transaction; the function now takes the claim's owner and lease and, after releasing the
dependents, claims the first ready one (by asset, then partition; never in a cancelled
run) exactly as ``claim_step`` does, returning it as ``claimed`` instead of in
``ready_steps``, together with what that step reads first: its dependency steps and their
materialization records (``claimed_inputs``, ``claimed_input_mats``), read in the same
transaction, so the continuation does not read them again. Everything else is revision
0002's function, unchanged: it is derived from that revision's text, which never changes
once released.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _revision_0002() -> ModuleType:
    path = Path(__file__).with_name("0002_finish_step_function.py")
    spec = importlib.util.spec_from_file_location("flowstone_io_postgres_rev_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CLAIM_ARGS = ",\n    p_claim_owner text, p_claim_lease timestamptz"
_CLAIM_TYPES = ", text, timestamptz"
_CLAIM = """
    IF p_claim_owner IS NOT NULL AND cardinality(ready_steps) > 0 THEN
        UPDATE {s}.steps s SET state = 'running', attempt = s.attempt + 1,
               owner = p_claim_owner, lease_expires_at = p_claim_lease, not_before = NULL,
               updated_at = p_now
         WHERE s.run_id = p_run AND s.state = 'ready'
           AND (s.asset, s.partition) = (
               SELECT r.asset, r.partition FROM unnest(ready_steps) AS r
                WHERE r.not_before IS NULL OR r.not_before <= p_now
                ORDER BY r.asset, r.partition LIMIT 1)
           AND EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = p_run AND status <> 'cancelled')
        RETURNING s.* INTO claimed;
        IF FOUND THEN
            v_claimed := true;
            ready_steps := ARRAY(SELECT r FROM unnest(ready_steps) AS r
                                 WHERE (r.asset, r.partition)
                                       IS DISTINCT FROM (claimed.asset, claimed.partition));
            -- what the claimed step reads first: its dependencies and their records
            SELECT COALESCE(array_agg(d), '{{}}'),
                   COALESCE(array_agg(m) FILTER (WHERE m.id IS NOT NULL), '{{}}')
              INTO claimed_inputs, claimed_input_mats
              FROM {s}.edges e
              JOIN {s}.steps d ON d.run_id = e.run_id AND d.asset = e.dep_asset
                              AND d.partition = e.dep_partition
              LEFT JOIN {s}.materializations m ON m.id = d.materialization_id
             WHERE e.run_id = p_run AND e.asset = claimed.asset
               AND e.partition = claimed.partition;
        END IF;
    END IF;
"""
_ANCHOR = "\n    IF cardinality(ready_steps) > 0 THEN"
_OUT = "OUT ready_steps {s}.steps[]"
_DECLARE = "    v_after text;"


def _function(old: ModuleType) -> str:
    body: str = old._FUNCTION
    for anchor in (_ANCHOR, _OUT, _DECLARE):
        assert anchor in body, anchor
    body = body.replace(
        _OUT,
        _OUT + ", OUT claimed {s}.steps, OUT claimed_inputs {s}.steps[], "
        "OUT claimed_input_mats {s}.materializations[]",
        1,
    )
    body = body.replace(_DECLARE, _DECLARE + "\n    v_claimed boolean := false;", 1)
    # a claimed step is running: the run is running, as when steps became ready
    resumed = _ANCHOR.replace("> 0", "> 0 OR v_claimed")
    return body.replace(_ANCHOR, _CLAIM + resumed, 1)


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    old = _revision_0002()
    op.execute(f"DROP FUNCTION IF EXISTS {s}.finish_step({old._ARG_TYPES})")
    op.execute(_function(old).format(s=s, signature=old._SIGNATURE + _CLAIM_ARGS))


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    old = _revision_0002()
    op.execute(f"DROP FUNCTION IF EXISTS {s}.finish_step({old._ARG_TYPES}{_CLAIM_TYPES})")
    op.execute(old._FUNCTION.format(s=s, signature=old._SIGNATURE))
