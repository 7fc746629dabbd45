"""Item updates become HOT: no index covers a column the run of an item changes.

An item row is written three times after its insert (queued by the window, claimed by its
runner, recorded with its result). The partial index ``scatter_items_queued`` (on
``queued_at``, for rows whose ``state`` is ``queued``) made every one of those writes a
non-HOT update that also inserted into all four indexes. Without it, and with room left
on each page (``fillfactor`` 50), Postgres rewrites the row in place in the same page and
touches no index: on a 2-vCPU machine the Postgres CPU of an unbatched scatter fell from
~60 to ~25 us per item (see ``docs/performance.md``, Scatter).

The sweeper found lost and dead items through that index. It now scans each running
barrier's items by unit (``scatter_items_unit``) from ``scatter_barriers.sweep_from``, a
low-water mark it keeps itself: every unit below it is finished, so a sweep reads about a
window of items, not the whole barrier.

Revision ID: scatter_0005
Revises: scatter_0004
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "scatter_0005"
down_revision = "scatter_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"DROP INDEX IF EXISTS {s}.scatter_items_queued")
    op.execute(f"ALTER TABLE {s}.scatter_items SET (fillfactor = 50)")
    op.execute(
        f"ALTER TABLE {s}.scatter_barriers ADD COLUMN IF NOT EXISTS sweep_from bigint NOT NULL "
        "DEFAULT 0"
    )


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"ALTER TABLE {s}.scatter_barriers DROP COLUMN IF EXISTS sweep_from")
    op.execute(f"ALTER TABLE {s}.scatter_items RESET (fillfactor)")
    op.execute(
        f"CREATE INDEX IF NOT EXISTS scatter_items_queued ON {s}.scatter_items "
        "(barrier_id, queued_at) WHERE state = 'queued'"
    )
