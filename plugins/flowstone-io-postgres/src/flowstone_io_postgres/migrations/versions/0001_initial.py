"""Initial FlowStone schema: runs, steps, edges, materializations, lineage, approvals,
gates, route decisions, cursors, ticks, audit, scatter item results and asset values.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import context, op

from flowstone_io_postgres._values_table import asset_values_ddl
from flowstone_io_postgres.identifiers import quote_ident

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STEP_STATES = (
    "'pending','ready','queued','running','waiting',"
    "'succeeded','failed','skipped','upstream_failed','cancelled'"
)

_TABLES = """
CREATE TABLE {s}.runs (
    run_id      text PRIMARY KEY,
    pipeline    text NOT NULL,
    targets     text[] NOT NULL,
    partition   text NOT NULL,
    status      text NOT NULL
                CHECK (status IN ('running','waiting','succeeded','failed','cancelled')),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    error       text,
    tags        jsonb NOT NULL DEFAULT '{{}}'
);
CREATE INDEX runs_created_idx ON {s}.runs (created_at DESC);
CREATE INDEX runs_pipeline_created_idx ON {s}.runs (pipeline, created_at DESC);

CREATE TABLE {s}.steps (
    run_id             text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
    asset              text NOT NULL,
    partition          text NOT NULL,
    ordinal            integer NOT NULL,
    state              text NOT NULL CHECK (state IN ({states})),
    remaining_deps     integer NOT NULL CHECK (remaining_deps >= 0),
    attempt            integer NOT NULL DEFAULT 0,
    owner              text,
    lease_expires_at   timestamptz,
    not_before         timestamptz,
    materialization_id text,
    error              text,
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (run_id, asset, partition)
);
CREATE INDEX steps_run_state_idx ON {s}.steps (run_id, state);
CREATE INDEX steps_sweep_idx ON {s}.steps (updated_at) WHERE state IN ('ready', 'running');

-- One row per dependency inside a plan (the key order finds a step's dependents).
CREATE TABLE {s}.edges (
    run_id        text NOT NULL,
    dep_asset     text NOT NULL,
    dep_partition text NOT NULL,
    asset         text NOT NULL,
    partition     text NOT NULL,
    PRIMARY KEY (run_id, dep_asset, dep_partition, asset, partition),
    FOREIGN KEY (run_id) REFERENCES {s}.runs (run_id) ON DELETE CASCADE
);
CREATE INDEX edges_dependent_idx ON {s}.edges (run_id, asset, partition);

CREATE TABLE {s}.materializations (
    id           text PRIMARY KEY,
    seq          bigserial NOT NULL,
    pipeline     text NOT NULL,
    run_id       text NOT NULL,
    asset        text NOT NULL,
    partition    text NOT NULL,
    state        text NOT NULL
                 CHECK (state IN ('running','waiting','succeeded','failed','skipped')),
    io_manager   text,
    location     text,
    attempt      integer NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    error        text,
    upstream     text[] NOT NULL DEFAULT '{{}}',
    metadata     jsonb NOT NULL DEFAULT '{{}}',
    invalidated  boolean NOT NULL DEFAULT false,
    UNIQUE (run_id, asset, partition)
);
CREATE INDEX materializations_asset_idx
    ON {s}.materializations (pipeline, asset, partition, seq DESC);
CREATE INDEX materializations_pipeline_idx ON {s}.materializations (pipeline, seq DESC);

CREATE TABLE {s}.lineage (
    upstream_id   text NOT NULL,
    downstream_id text NOT NULL,
    PRIMARY KEY (upstream_id, downstream_id)
);

CREATE TABLE {s}.approvals (
    id          bigserial PRIMARY KEY,
    pipeline    text NOT NULL,
    run_id      text NOT NULL,
    asset       text NOT NULL,
    partition   text NOT NULL,
    message     text NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending','approved','rejected','expired')),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    io_manager  text,
    location    text,
    decided_by  text,
    decided_at  timestamptz,
    reason      text,
    metadata    jsonb NOT NULL DEFAULT '{{}}'
);
CREATE INDEX approvals_step_idx ON {s}.approvals (run_id, asset, partition, id DESC);
CREATE INDEX approvals_due_idx ON {s}.approvals (expires_at) WHERE status = 'pending';

CREATE TABLE {s}.gates (
    token_hash  text PRIMARY KEY,
    pipeline    text NOT NULL,
    run_id      text NOT NULL,
    asset       text NOT NULL,
    partition   text NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending','signaled','expired')),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    payload     jsonb,
    signaled_at timestamptz,
    metadata    jsonb NOT NULL DEFAULT '{{}}'
);
CREATE INDEX gates_due_idx ON {s}.gates (expires_at) WHERE status = 'pending';

CREATE TABLE {s}.route_decisions (
    run_id     text NOT NULL,
    router     text NOT NULL,
    partition  text NOT NULL,
    branch     text NOT NULL,
    decided_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, router, partition)
);
CREATE INDEX route_decisions_age_idx ON {s}.route_decisions (decided_at);

CREATE TABLE {s}.cursors (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE {s}.ticks (
    name       text NOT NULL,
    tick       text NOT NULL,
    claimed_at timestamptz NOT NULL,
    PRIMARY KEY (name, tick)
);

CREATE TABLE {s}.audit (
    id        bigserial PRIMARY KEY,
    run_id    text NOT NULL,
    at        timestamptz NOT NULL,
    kind      text NOT NULL,
    asset     text,
    partition text,
    detail    jsonb NOT NULL DEFAULT '{{}}'
);
CREATE INDEX audit_run_idx ON {s}.audit (run_id, id);

CREATE TABLE {s}.item_results (
    run_id     text NOT NULL,
    asset      text NOT NULL,
    partition  text NOT NULL,
    idx        integer NOT NULL,
    key        text NOT NULL,
    state      text NOT NULL CHECK (state IN ('succeeded','failed')),
    value_json text,
    error      text,
    PRIMARY KEY (run_id, asset, partition, idx)
);
"""


def upgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    for statement in _TABLES.format(s=s, states=_STEP_STATES).split(";"):
        if statement.strip():
            op.execute(statement)
    op.execute(asset_values_ddl(f"{s}.asset_values"))


def downgrade() -> None:
    s = quote_ident(context.config.attributes["flowstone_schema"], what="schema")
    for table in (
        "asset_values", "item_results", "audit", "ticks", "cursors", "route_decisions",
        "gates", "approvals", "lineage", "materializations", "edges", "steps", "runs",
    ):  # fmt: skip
        op.execute(f"DROP TABLE IF EXISTS {s}.{table}")
