"""``SQLiteConnection``: the connection a SQLite run store shares between threads and processes.

Within a process the store uses one connection guarded by a lock. Measured against one
connection per thread, the lock hands the connection over without SQLite's sleep-and-retry
busy handler, which is what makes a thread pool of workers fast; SQLite serialises writers
anyway. After ``fork`` the child opens its own connection (an inherited one must not be used).

Also here: the small SQL builders the store's queries share.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from flowstone.defaults.sqlite_checkpoints import WalCheckpointer
from flowstone.defaults.sqlite_schema import migrate
from flowstone.errors import StorageError
from flowstone.store_rules import utc_now

__all__ = ["STEP_KEY", "SQLiteConnection", "filters", "marks"]

STEP_KEY = "run_id = ? AND asset = ? AND partition = ?"


class SQLiteConnection:
    """Opens, shares and closes the connection of a :class:`~flowstone.defaults.sqlite_store.
    SQLiteRunStore` (its base class; see there for the arguments).

    Nothing happens at construction: the connection is opened, and the schema created or
    upgraded, on first use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ".flowstone/flowstone.db",
        *,
        busy_timeout: float = 30.0,
    ) -> None:
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self.clock: Callable[[], datetime] = utc_now
        """The store's clock, the one place its statements read the time (leases,
        ``not_before``, re-sends, expiries, ``updated_at``); replace it to test."""
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        # connections (and checkpointers holding one) inherited through fork: closing them
        # would disturb the parent's locks
        self._inherited: list[sqlite3.Connection | WalCheckpointer] = []
        self._checkpoints: WalCheckpointer | None = None  # the WAL copied in the background

    @property
    def path(self) -> str:
        """The database file this store uses."""
        return self._path

    def _db(self) -> sqlite3.Connection:
        """The process's connection, opened (and the schema migrated) on first use."""
        conn = self._conn
        if conn is not None and self._pid == os.getpid():
            return conn
        if conn is not None:
            self._inherited.append(conn)
            self._conn = None
        if self._checkpoints is not None:
            self._inherited.append(self._checkpoints)
            self._checkpoints = None
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            # switching a new file to WAL takes an exclusive lock that does not wait on
            # busy_timeout: two processes opening one fresh file at once must retry
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), self._busy_timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            # checkpoint (and fsync) every ~40 MB of WAL instead of every 4 MB: on slow
            # disks the default checkpoints cost more than all the commits between them
            conn.execute("PRAGMA wal_autocheckpoint = 10000")
            # up to 32 MiB of pages kept in memory (SQLite's default is 2 MiB): a run's
            # steps, their indexes and the records they read stay cached as the file grows
            # (the statements of a 500-asset run took 85-94 ms instead of 99-108 ms after
            # a dozen runs)
            conn.execute("PRAGMA cache_size = -32768")
            conn.execute("PRAGMA foreign_keys = ON")
            _retry_locked(lambda: migrate(conn), self._busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"cannot open the SQLite run store at {self._path!r}: {exc}; check that the "
                "directory is writable and the file is a FlowStone database"
            ) from exc
        self._conn, self._pid = conn, os.getpid()
        if self._path != ":memory:":
            self._checkpoints = WalCheckpointer(self._path)
        return conn

    def _write(self) -> _Transaction:
        """One write transaction, serialised with other threads and processes
        (``with self._write() as conn:``)."""
        return _Transaction(self)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> StorageError:
        return StorageError(f"SQLite run store {self._path!r} failed: {exc}")

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        """Close the connection; a later call reopens it."""
        with self._lock:
            if self._pid == os.getpid():
                if self._checkpoints is not None:
                    self._checkpoints.close()
                if self._conn is not None:
                    self._conn.close()
            self._conn = self._checkpoints = None


class _Transaction:
    """``SQLiteConnection._write()``: holds the store's lock, ``BEGIN IMMEDIATE`` on entry,
    ``COMMIT`` on a clean exit, ``ROLLBACK`` otherwise; SQLite errors become
    :class:`~flowstone.errors.StorageError`. (A class, not a generator context manager:
    it is entered twice per step.)"""

    __slots__ = ("_conn", "_store")

    def __init__(self, store: SQLiteConnection) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        store._lock.acquire()
        conn = None
        try:
            conn = self._conn = store._db()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._end(exc, conn)
        assert conn is not None  # (_end raised otherwise)
        return conn

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self._conn.execute("COMMIT")
            except BaseException as failed:
                self._end(failed, self._conn)
            store = self._store
            try:
                if store._checkpoints is not None:
                    store._checkpoints.committed()
            finally:
                store._lock.release()
        else:
            self._end(exc, self._conn)

    def _end(self, exc: BaseException, conn: sqlite3.Connection | None) -> NoReturn:
        """Roll back, let the lock go and raise ``exc`` (a SQLite error as StorageError)."""
        try:
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            self._store._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise self._store._error(exc) from exc
        raise exc


# --- SQL builders ---------------------------------------------------------------------------
BATCH = 400
"""Keys per statement in batched reads (SQLite allows 999 bound parameters in old builds)."""


def marks(n: int) -> str:
    return ", ".join("?" * n)


def filters(**values: str | None) -> tuple[str, list[str]]:
    """A WHERE clause from keyword=value pairs (None = no filter). Keys are our column names."""
    used = {k: v for k, v in values.items() if v is not None}
    if not used:
        return "WHERE 1 = 1", []
    return "WHERE " + " AND ".join(f"{k} = ?" for k in used), list(used.values())


def _retry_locked(action: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
