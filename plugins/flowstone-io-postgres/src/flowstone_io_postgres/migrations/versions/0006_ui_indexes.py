"""Indexes for what flowstone-ui reads: keyset pages of runs and waits, an asset's newest record.

* runs by pipeline (and by pipeline and status), newest first with the run id as the tie
  break: the runs list's first and deep pages are one index range each;
* unfinished runs by pipeline (partial, tiny): which steps are running now;
* materializations by pipeline and asset, newest first: the asset graph's colours;
* pending approvals and gates by pipeline (partial): the waits inbox.

Plain ``CREATE INDEX`` (Alembic runs each revision in a transaction): on a large live store
it blocks writes to the table while it builds, so upgrade in a quiet moment.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres.identifiers import quote_ident

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_INDEXES = (
    ("runs_ui_pipeline_idx", "{s}.runs (pipeline, created_at DESC, run_id DESC)"),
    ("runs_ui_status_idx", "{s}.runs (pipeline, status, created_at DESC, run_id DESC)"),
    ("runs_ui_active_idx",
     "{s}.runs (pipeline, created_at DESC) WHERE status IN ('running', 'waiting')"),
    ("materializations_ui_newest_idx", "{s}.materializations (pipeline, asset, seq DESC)"),
    ("approvals_ui_pending_idx", "{s}.approvals (pipeline, id) WHERE status = 'pending'"),
    ("gates_ui_pending_idx",
     "{s}.gates (pipeline, created_at, token_hash) WHERE status = 'pending'"),
)  # fmt: skip


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    for name, target in _INDEXES:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target.format(s=s)}")


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    for name, _ in reversed(_INDEXES):
        op.execute(f"DROP INDEX IF EXISTS {s}.{name}")
