"""Lost-message re-sends back off: ``scatter_items.resends`` counts the re-sends of an item
never claimed since, so the sweeper waits the recover interval doubled per re-send (like
the run store's ``steps.resends``) instead of re-sending a backlogged window every interval.

Revision ID: scatter_0004
Revises: scatter_0003
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "scatter_0004"
down_revision = "scatter_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(
        f"ALTER TABLE {s}.scatter_items ADD COLUMN IF NOT EXISTS resends integer NOT NULL "
        "DEFAULT 0"
    )


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"ALTER TABLE {s}.scatter_items DROP COLUMN IF EXISTS resends")
