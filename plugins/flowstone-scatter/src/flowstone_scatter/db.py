"""The scatter tables' database: the run store's connections, in the run store's schema.

Scatter bookkeeping runs inside Celery pool children (sync code). It has no event loop or
connection pool of its own: every statement runs on the pipeline's
:class:`~flowstone_io_postgres.PostgresRunStore` (its asyncpg runtime, so the worker keeps
one connection budget, and its fork safety), against the tables in the store's schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from flowstone_io_postgres import PostgresRunStore
from flowstone_scatter.schema import MIGRATIONS, Tables

__all__ = ["Database"]

T = TypeVar("T")


class Database:
    """Sync facade: ``db.run(lambda conn: coroutine)`` on one of the store's connections.

    Args:
        store: the run store whose connections and schema the scatter tables share.
        owned: close the store with :meth:`close` (a store built only for the scatter).

    The tables must be at their head revision (``flowstone db upgrade``, or the store's
    ``auto_migrate``); that is checked on construction.
    """

    __slots__ = ("_owned", "store", "t")

    def __init__(self, store: PostgresRunStore, *, owned: bool = False) -> None:
        self.store = store
        self.t = Tables.in_schema(store.schema)
        self._owned = owned
        store.require_migrations(MIGRATIONS)

    def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn(conn)`` on a connection of the store and return its result.

        Raises:
            StorageError: the database failed.
        """
        return self.store.run_on_connection(fn, action="scatter bookkeeping")

    def close(self) -> None:
        """Close the store if this database opened it (a pipeline's store is its own)."""
        if self._owned:
            self.store.close()
