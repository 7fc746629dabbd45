"""``finish_step`` on the database's clock, fencing resolvers of waiting steps, keeping ids.

* Time is the database's (issue: workers with a skewed clock took over live leases and
  expired waits early): every timestamp the function writes is anchored at ``now()``. The
  continuation's lease and a new approval's or gate's expiry keep the durations the caller
  meant (``p_claim_lease - p_now``, ``p_ap_expires - p_ap_created``,
  ``p_g_expires - p_g_created``); the signature is unchanged.
* The fence also holds a ``waiting`` step claimed by the process resolving its wait
  (``consume_gate(claim=...)`` / ``take_over_wait``), so a consumed gate is finished once,
  by its resolver or, after that claim lapsed, by the one that took it over.
* A materialization keeps its id when its step finishes again (a resumed run): it used to
  be replaced (``SET id = EXCLUDED.id``), leaving lineage and join records naming a record
  that no longer existed.

* Cancelling a run also cancels its pending approvals and gates (status ``cancelled``), so
  an old token or approval id cannot finish a step of the cancelled or resumed run.

The function is ``migrations/sql/0008_finish_step.sql``; the downgrade restores
``0007_finish_step.sql`` (and marks cancelled waits expired, which 0007 knows).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident
from flowstone_io_postgres.migrate import replace_function

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


_STATUSES = {
    "approvals": "'pending','approved','rejected','expired'",
    "gates": "'pending','signaled','expired'",
}


def _statuses(extra: str) -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    for table, allowed in _STATUSES.items():
        op.execute(
            f"ALTER TABLE {s}.{table} DROP CONSTRAINT IF EXISTS {table}_status_check, "
            f"ADD CONSTRAINT {table}_status_check CHECK (status IN ({allowed}{extra}))"
        )


def upgrade() -> None:
    replace_function("finish_step", "0008_finish_step.sql")
    _statuses(",'cancelled'")


def downgrade() -> None:
    replace_function("finish_step", "0007_finish_step.sql")
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    for table in _STATUSES:
        op.execute(f"UPDATE {s}.{table} SET status = 'expired' WHERE status = 'cancelled'")
    _statuses("")
