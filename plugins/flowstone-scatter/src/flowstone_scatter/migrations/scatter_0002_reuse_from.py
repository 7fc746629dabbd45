"""A ``retry_failed_items`` barrier reuses the succeeded items of an earlier barrier.

Revision ID: scatter_0002
Revises: scatter_0001
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "scatter_0002"
down_revision = "scatter_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"ALTER TABLE {s}.scatter_barriers ADD COLUMN IF NOT EXISTS reuse_from bigint")


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"ALTER TABLE {s}.scatter_barriers DROP COLUMN IF EXISTS reuse_from")
