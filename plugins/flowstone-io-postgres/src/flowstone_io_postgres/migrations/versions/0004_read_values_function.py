"""``read_values``: the values a claimed continuation reads, as of the claim.

``finish_step`` (revision 0003) claims the step a worker runs next; the same statement
then reads that step's input values from the IO manager's table (``claimed_values``), so
the continuation loads none. Read by the statement itself, they would come from the
statement's snapshot, taken before the function waited for racing finishers: the value of
a branch that finished a moment earlier would be missing. This function is ``VOLATILE``,
so its query takes a fresh snapshot, after the claim, and sees every input the claim
saw. The table is a ``regclass`` (``to_regclass`` of a validated, quoted name: a
missing table reads nothing); the locations are bound. The function is
``migrations/sql/0004_read_values.sql``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident
from flowstone_io_postgres.migrate import function_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["flowstone_schema"]
    op.execute(function_sql("0004_read_values.sql", schema))


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"DROP FUNCTION IF EXISTS {s}.read_values(regclass, text[])")
