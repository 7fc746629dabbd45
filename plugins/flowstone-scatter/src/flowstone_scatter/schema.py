"""The scatter tables, created and upgraded by plain versioned SQL.

Versions are recorded in ``flowstone.scatter_schema_version``; an advisory lock makes
concurrent first uses (many workers starting at once) apply each version once.
"""

from __future__ import annotations

from typing import Final

import asyncpg

__all__ = ["MIGRATIONS", "migrate"]

_LOCK_KEY: Final = 0x5C477E12  # advisory lock id of the scatter migrations

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: barriers and items
    """
    CREATE TABLE flowstone.scatter_barriers (
        id bigserial PRIMARY KEY,
        pipeline text NOT NULL,
        run_id text NOT NULL,
        asset text NOT NULL,
        partition text NOT NULL,
        token text NOT NULL,
        state text NOT NULL,
        outcome text,
        error text,
        expected_total bigint,
        total_items bigint NOT NULL DEFAULT 0,
        units_total bigint NOT NULL DEFAULT 0,
        next_unit bigint NOT NULL DEFAULT 0,
        inflight bigint NOT NULL DEFAULT 0,
        succeeded bigint NOT NULL DEFAULT 0,
        failed bigint NOT NULL DEFAULT 0,
        max_concurrent integer NOT NULL,
        chunk_units integer NOT NULL,
        reader_done boolean NOT NULL,
        reader_owner text,
        reader_beat timestamptz,
        checkpoint jsonb,
        next_index bigint NOT NULL DEFAULT 0,
        rate_next timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (run_id, asset, partition)
    );
    CREATE INDEX scatter_barriers_active ON flowstone.scatter_barriers (state)
        WHERE state IN ('running', 'finishing');
    CREATE TABLE flowstone.scatter_items (
        barrier_id bigint NOT NULL,
        idx bigint NOT NULL,
        unit bigint NOT NULL,
        key text NOT NULL,
        item text NOT NULL,
        state text NOT NULL DEFAULT 'pending',
        attempts integer NOT NULL DEFAULT 0,
        result text,
        error text,
        queued_at timestamptz,
        PRIMARY KEY (barrier_id, idx)
    );
    CREATE UNIQUE INDEX scatter_items_key ON flowstone.scatter_items (barrier_id, md5(key));
    CREATE INDEX scatter_items_unit ON flowstone.scatter_items (barrier_id, unit);
    CREATE INDEX scatter_items_queued ON flowstone.scatter_items (barrier_id, queued_at)
        WHERE state = 'queued';
    """,
    # 2: a retry_failed_items barrier reuses the succeeded items of an earlier barrier
    """
    ALTER TABLE flowstone.scatter_barriers ADD COLUMN reuse_from bigint;
    """,
)


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply the versions this database lacks; return the schema version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute("CREATE SCHEMA IF NOT EXISTS flowstone")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS flowstone.scatter_schema_version ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval(
            "SELECT coalesce(max(version), 0) FROM flowstone.scatter_schema_version"
        )
        for number, sql in enumerate(MIGRATIONS, start=1):
            if number > current:
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO flowstone.scatter_schema_version (version) VALUES ($1)", number
                )
        return len(MIGRATIONS)
