"""Finishes in batches: ``finish_step(..., p_settle)`` and ``settle_run``.

A worker running a pack of steps (several ready steps of a run in one message) commits
their finishes together: one transaction, one WAL flush and one lock of the run's row per
batch instead of per step. ``finish_step`` takes ``p_settle`` (default true, the old
behaviour): false leaves the run's status to the caller, which calls ``settle_run`` once
per run of the batch before it commits. ``settle_run`` holds the statements ``finish_step``
ran before (lock the run row, recompute its status in a fresh snapshot).

The functions are ``migrations/sql/0010_settle_run.sql`` and
``migrations/sql/0010_finish_step.sql``; the downgrade restores ``0008_finish_step.sql``.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident
from flowstone_io_postgres.migrate import replace_function

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    replace_function("settle_run", "0010_settle_run.sql")
    replace_function("finish_step", "0010_finish_step.sql")


def downgrade() -> None:
    replace_function("finish_step", "0008_finish_step.sql")
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"DROP FUNCTION IF EXISTS {s}.settle_run")
