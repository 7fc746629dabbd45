"""A sweeper's re-sends of a step: ``steps.resent_at`` and ``steps.resends``.

The sweeper used to select every step ``ready`` for longer than the recover interval, with
no limit and recording nothing, so each sweep re-published the whole backlog again (200
backlogged steps became 1,600 duplicate messages after 8 sweeps). ``resend_steps`` now
stamps each re-send in the same ``UPDATE ... RETURNING`` (when, and how many since the step
was last claimed: a claim resets both), waits the recover interval doubled per re-send
before sending a step again, and returns at most a batch per sweep.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    # a constant default: no table rewrite (PostgreSQL 11+)
    op.execute(
        f"ALTER TABLE {s}.steps ADD COLUMN IF NOT EXISTS resent_at timestamptz, "
        "ADD COLUMN IF NOT EXISTS resends integer NOT NULL DEFAULT 0"
    )


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(
        f"ALTER TABLE {s}.steps DROP COLUMN IF EXISTS resends, DROP COLUMN IF EXISTS resent_at"
    )
