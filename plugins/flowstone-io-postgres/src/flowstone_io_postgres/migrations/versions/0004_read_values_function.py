"""``read_values``: the values a claimed continuation reads, as of the claim.

``finish_step`` (revision 0003) claims the step a worker runs next; the same statement
then reads that step's input values from the IO manager's table (``claimed_values``), so
the continuation loads none. Read by the statement itself, they would come from the
statement's snapshot, taken before the function waited for racing finishers: the value of
a branch that finished a moment earlier would be missing. This function is ``VOLATILE``,
so its query takes a fresh snapshot, after the claim, and sees every input the claim
saw. The table is a ``regclass`` (``to_regclass`` of a validated, quoted name: a
missing table reads nothing); the locations are bound.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE FUNCTION {s}.read_values(p_table regclass, p_locations text[])
RETURNS TABLE (location text, format text, value_json text, data bytea)
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    IF p_table IS NULL OR cardinality(p_locations) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT v.location, v.format, v.value_json::text, v.data FROM %s AS v '
        'WHERE v.location = ANY($1)', p_table)
    USING p_locations;
END
$fn$;
"""


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(_FUNCTION.format(s=s))


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"DROP FUNCTION IF EXISTS {s}.read_values(regclass, text[])")
