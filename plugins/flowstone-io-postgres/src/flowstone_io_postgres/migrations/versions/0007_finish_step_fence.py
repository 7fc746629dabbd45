"""``finish_step`` is fenced by the finishing runner's claim (its owner and attempt).

A runner whose lease expired while its asset still ran, and whose step another worker then
claimed again (attempt + 1), used to commit its finish all the same: its record and the
dependents it released won, and the new attempt's finish was refused. The function now takes
``p_fence_owner`` / ``p_fence_attempt`` (the claim ``claim_step`` returned): when given, the
step changes only while it is ``running`` for that owner at that attempt, in the same
``UPDATE``; otherwise nothing is written and ``applied`` is false (the stale attempt's value
stays an orphan at its own attempt-scoped location). NULL keeps the old rule (resume paths
finish a waiting step nobody holds). Everything else is revision 0003's function, unchanged.
The function is ``migrations/sql/0007_finish_step.sql``; the downgrade restores
``0003_finish_step.sql``.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from flowstone_io_postgres.migrate import replace_function

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    replace_function("finish_step", "0007_finish_step.sql")


def downgrade() -> None:
    replace_function("finish_step", "0003_finish_step.sql")
