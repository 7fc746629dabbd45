"""Step notes: the named home of small write-once facts about a step.

Until now a timed parallel asset's branch clock (``parallel-start:<run>:<asset>``) and
flowstone-parallel's record of a failed join (``flowstone.parallel.join:<run>:<asset>:
<partition>``) were kept as cursors, a key-value store meant for the daemon. They move to
``step_notes`` (one row per run, asset, partition and kind; the first write wins), and the
cursors holding them are moved over: run ids and asset names contain no ``:``, so the keys
split unambiguously (the partition comes last and may contain ``:``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_UPGRADE = (
    """CREATE TABLE {s}.step_notes (
    run_id     text NOT NULL,
    asset      text NOT NULL,
    partition  text NOT NULL,
    kind       text NOT NULL,
    value      text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, asset, partition, kind)
)""",
    """INSERT INTO {s}.step_notes (run_id, asset, partition, kind, value, created_at)
SELECT m[1], m[2], '', 'parallel.started', c.value, c.updated_at
  FROM {s}.cursors c, regexp_match(c.name, '^parallel-start:([^:]+):([^:]+)$') AS m
 WHERE c.name LIKE 'parallel-start:%' AND m IS NOT NULL
ON CONFLICT DO NOTHING""",
    """INSERT INTO {s}.step_notes (run_id, asset, partition, kind, value, created_at)
SELECT m[1], m[2], m[3], 'flowstone.parallel.join', c.value, c.updated_at
  FROM {s}.cursors c,
       regexp_match(c.name, '^flowstone\\.parallel\\.join:([^:]+):([^:]+):(.*)$') AS m
 WHERE c.name LIKE 'flowstone.parallel.join:%' AND m IS NOT NULL
ON CONFLICT DO NOTHING""",
    """DELETE FROM {s}.cursors
 WHERE name LIKE 'parallel-start:%' OR name LIKE 'flowstone.parallel.join:%'""",
)


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    for statement in _UPGRADE:
        op.execute(statement.format(s=s))


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(
        f"""INSERT INTO {s}.cursors (name, value, updated_at)
SELECT CASE WHEN kind = 'parallel.started' THEN 'parallel-start:' || run_id || ':' || asset
            ELSE 'flowstone.parallel.join:' || run_id || ':' || asset || ':' || partition END,
       value, created_at
  FROM {s}.step_notes WHERE kind IN ('parallel.started', 'flowstone.parallel.join')
ON CONFLICT DO NOTHING"""
    )
    op.execute(f"DROP TABLE IF EXISTS {s}.step_notes")
