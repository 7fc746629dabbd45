"""A batch of finishes in one round trip: ``finish_step(..., p_lock_*, p_settle_run)``.

A worker's batch of finishes of one statement shape (a pack's steps, each with its staged
value) used five round trips: ``BEGIN``, the lock of every pending dependent, the pipelined
finishes, the settle of each run, ``COMMIT``. With the new arguments the batch's first call
takes the dependents' lock and each run's last call settles it, so the pipelined finishes
are the whole transaction (asyncpg sends them with one Sync: one implicit transaction).
Called without the new arguments the function is 0010's (a single finish passes the
defaults). Like every revision it needs the release that ships it: an older
flowstone-io-postgres refuses a schema at a revision it does not know.

The function is ``migrations/sql/0011_finish_step.sql``; the downgrade restores
``0010_finish_step.sql``.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from flowstone_io_postgres.migrate import replace_function

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    replace_function("finish_step", "0011_finish_step.sql")


def downgrade() -> None:
    replace_function("finish_step", "0010_finish_step.sql")
