"""PostgresRunStore against the core RunStore contract suite."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import asyncpg
import pytest

from flowstone.protocols import RunStore
from flowstone.testing.store_contract import RunStoreContract
from flowstone_io_postgres import PostgresRunStore

pytestmark = pytest.mark.integration


class TestPostgresRunStore(RunStoreContract):
    supports_get_runs = True
    supports_continuation_reads = True
    supports_batch_finish = True
    supports_bulk_run_creation = True
    supports_bulk_claim = True

    @pytest.fixture
    def store(self, shared_store: PostgresRunStore) -> Iterator[PostgresRunStore]:
        # One store (one pool) for the whole session: the suite uses unique ids per test.
        yield shared_store

    def let_time_pass(self, store: RunStore, run_ids: Sequence[str], seconds: float) -> None:
        """The database's clock cannot be moved: the runs' step timestamps move back."""
        assert isinstance(store, PostgresRunStore)

        async def age(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE flowstone.steps SET updated_at = updated_at - $2 * interval '1 second', "
                "not_before = not_before - $2 * interval '1 second', "
                "lease_expires_at = lease_expires_at - $2 * interval '1 second', "
                "resent_at = resent_at - $2 * interval '1 second' "
                "WHERE run_id = ANY($1::text[])",
                list(run_ids), float(seconds),
            )  # fmt: skip

        store.run_on_connection(age, action="ageing steps for a test")
