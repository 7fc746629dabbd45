"""``finish_step`` as one server-side function: the whole transaction in one round trip.

``RunStore.finish_step`` used to send five or six statements (step transition with audit,
materialization and lineage; approval or gate; dependents; run row lock; status recompute)
inside BEGIN ... COMMIT: seven round trips. The function does the same statements, in the
same order, inside the caller's single-statement transaction:

* the step moves only if its state is in ``p_from`` (exactly once: a concurrent or
  redelivered finisher re-checks the committed row and matches nothing); when it does not
  move, ``applied`` is false and ``step_state`` tells the caller why (NULL: no such step);
* dependents are locked in (asset, partition) order, then decremented; those reaching zero
  become ``ready`` and are returned (to this caller only);
* the run row is locked before the status is recomputed by a *later statement*. A PL/pgSQL
  function is VOLATILE, so under READ COMMITTED each statement takes a fresh snapshot: the
  recompute sees every finisher that committed before we got the lock, exactly as the
  multi-statement transaction did.

The function is ``migrations/sql/0002_finish_step.sql``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident
from flowstone_io_postgres.migrate import function_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["flowstone_schema"]
    op.execute(function_sql("0002_finish_step.sql", schema))


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    op.execute(f"DROP FUNCTION IF EXISTS {s}.finish_step")
