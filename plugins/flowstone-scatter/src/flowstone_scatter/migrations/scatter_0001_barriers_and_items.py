"""The scatter barrier (one row per scatter step) and its items (one row per item).

``IF NOT EXISTS`` throughout: a database whose scatter tables were created by
flowstone-scatter 0.1's own runner (``flowstone.scatter_schema_version``) adopts them as
they are.

Revision ID: scatter_0001
Revises:
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "scatter_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"""
    CREATE TABLE IF NOT EXISTS {s}.scatter_barriers (
        id bigserial PRIMARY KEY,
        pipeline text NOT NULL,
        run_id text NOT NULL,
        asset text NOT NULL,
        partition text NOT NULL,
        token text NOT NULL,
        state text NOT NULL,
        outcome text,
        error text,
        expected_total bigint,
        total_items bigint NOT NULL DEFAULT 0,
        units_total bigint NOT NULL DEFAULT 0,
        next_unit bigint NOT NULL DEFAULT 0,
        inflight bigint NOT NULL DEFAULT 0,
        succeeded bigint NOT NULL DEFAULT 0,
        failed bigint NOT NULL DEFAULT 0,
        max_concurrent integer NOT NULL,
        chunk_units integer NOT NULL,
        reader_done boolean NOT NULL,
        reader_owner text,
        reader_beat timestamptz,
        checkpoint jsonb,
        next_index bigint NOT NULL DEFAULT 0,
        rate_next timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (run_id, asset, partition)
    )""")
    op.execute(f"""
    CREATE INDEX IF NOT EXISTS scatter_barriers_active ON {s}.scatter_barriers (state)
        WHERE state IN ('running', 'finishing')""")
    op.execute(f"""
    CREATE TABLE IF NOT EXISTS {s}.scatter_items (
        barrier_id bigint NOT NULL,
        idx bigint NOT NULL,
        unit bigint NOT NULL,
        key text NOT NULL,
        item text NOT NULL,
        state text NOT NULL DEFAULT 'pending',
        attempts integer NOT NULL DEFAULT 0,
        result text,
        error text,
        queued_at timestamptz,
        PRIMARY KEY (barrier_id, idx)
    )""")
    op.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS scatter_items_key ON {s}.scatter_items "
               "(barrier_id, md5(key))")
    op.execute(f"CREATE INDEX IF NOT EXISTS scatter_items_unit ON {s}.scatter_items "
               "(barrier_id, unit)")
    op.execute(f"CREATE INDEX IF NOT EXISTS scatter_items_queued ON {s}.scatter_items "
               "(barrier_id, queued_at) WHERE state = 'queued'")


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"DROP TABLE IF EXISTS {s}.scatter_items")
    op.execute(f"DROP TABLE IF EXISTS {s}.scatter_barriers")
