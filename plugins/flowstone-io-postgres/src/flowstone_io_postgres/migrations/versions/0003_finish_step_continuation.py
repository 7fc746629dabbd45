"""``finish_step`` can claim the step that runs next: a continuation without a round trip.

A worker that finished a step usually runs one of the dependents it made ready right away
(FlowStone's Celery workers do, see ``FLOWSTONE_INLINE_STEPS``). Claiming it took a second
transaction; the function now takes the claim's owner and lease and, after releasing the
dependents, claims the first ready one (by asset, then partition; never in a cancelled
run) exactly as ``claim_step`` does, returning it as ``claimed`` instead of in
``ready_steps``, together with what that step reads first: its dependency steps and their
materialization records (``claimed_inputs``, ``claimed_input_mats``), read in the same
transaction, so the continuation does not read them again. Everything else is revision
0002's function, unchanged. The function is ``migrations/sql/0003_finish_step.sql``; the
downgrade restores ``0002_finish_step.sql``.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from flowstone_io_postgres.migrate import replace_function

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    replace_function("finish_step", "0003_finish_step.sql")


def downgrade() -> None:
    replace_function("finish_step", "0002_finish_step.sql")
