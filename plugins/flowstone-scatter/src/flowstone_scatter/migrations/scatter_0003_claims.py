"""Claims on items and on the finish, so recovery can tell a lost message from a dead runner.

* ``scatter_items.claimed_at`` / ``claimed_by``: set when a runner takes a queued item (and
  renewed while it runs). A queued item never claimed is a lost message, re-sent after the
  recover interval; a claimed one whose claim went stale is a dead runner, re-sent after a
  lease. A second message for a live claim runs nothing.
* ``scatter_barriers.finisher`` / ``finish_expires``: the finishing barrier's claim (who runs
  the gather), renewed while the gather runs, so the sweeper never runs it twice.
* ``scatter_barriers.read_sent_at``: when the reader message was last (re-)sent.
* an index on ``(state, updated_at)`` for pruning finished barriers by retention.

Revision ID: scatter_0003
Revises: scatter_0002
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "scatter_0003"
down_revision = "scatter_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(
        f"ALTER TABLE {s}.scatter_items ADD COLUMN IF NOT EXISTS claimed_at timestamptz, "
        "ADD COLUMN IF NOT EXISTS claimed_by text"
    )
    op.execute(
        f"ALTER TABLE {s}.scatter_barriers ADD COLUMN IF NOT EXISTS finisher text, "
        "ADD COLUMN IF NOT EXISTS finish_expires timestamptz, "
        "ADD COLUMN IF NOT EXISTS read_sent_at timestamptz"
    )
    op.execute(
        f"CREATE INDEX IF NOT EXISTS scatter_barriers_done ON {s}.scatter_barriers "
        "(updated_at) WHERE state IN ('succeeded', 'failed', 'cancelled')"
    )


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"DROP INDEX IF EXISTS {s}.scatter_barriers_done")
    op.execute(
        f"ALTER TABLE {s}.scatter_barriers DROP COLUMN IF EXISTS read_sent_at, "
        "DROP COLUMN IF EXISTS finish_expires, DROP COLUMN IF EXISTS finisher"
    )
    op.execute(
        f"ALTER TABLE {s}.scatter_items DROP COLUMN IF EXISTS claimed_by, "
        "DROP COLUMN IF EXISTS claimed_at"
    )
