"""PostgresRunStore against the core RunStore contract suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flowstone.testing.store_contract import RunStoreContract
from flowstone_io_postgres import PostgresRunStore

pytestmark = pytest.mark.integration


class TestPostgresRunStore(RunStoreContract):
    supports_get_runs = True
    supports_continuation_reads = True

    @pytest.fixture
    def store(self, shared_store: PostgresRunStore) -> Iterator[PostgresRunStore]:
        # One store (one pool) for the whole session: the suite uses unique ids per test.
        yield shared_store
