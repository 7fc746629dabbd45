"""An IO manager that keeps values in a SQLite file (stdlib ``sqlite3``).

It is the embedded default beside the SQLite run store: one write is one small
transaction (tens of microseconds) instead of a file creation (hundreds on many disks),
values are written atomically, and the whole state of a laptop setup is two files to copy.
Use :class:`~flowstone.defaults.filesystem_io.FilesystemIOManager` for very large values
or values other tools should read as files.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flowstone.codec import EncodedValue, decode_from_storage, encode_for_storage
from flowstone.defaults.sqlite_checkpoints import WalCheckpointer
from flowstone.defaults.sqlite_connection import BATCH
from flowstone.errors import StorageError, UnsafeKeyError, ValueNotFoundError
from flowstone.protocols import StorageKey
from flowstone.records import StagedValue

__all__ = ["STAGING_TARGET", "SQLiteIOManager", "write_staged"]

_PREFIX = "sqlite:"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS flowstone_values (
    location   TEXT PRIMARY KEY,
    format     TEXT NOT NULL,
    data       BLOB NOT NULL,
    written_at INTEGER
)
"""
_UPSERT = (
    "INSERT INTO flowstone_values(location, format, data, written_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT(location) DO UPDATE SET format = excluded.format, data = excluded.data,"
    " written_at = excluded.written_at"
)
STAGING_TARGET = "flowstone.sqlite-values"
"""The :attr:`SQLiteIOManager.staging_target`: values the SQLite run store writes."""
_WRITTEN_AT = "ALTER TABLE flowstone_values ADD COLUMN written_at INTEGER"  # files before it
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~-]*")  # what quote(safe="") leaves as it is
_RECENT_VALUES = 256  # values this manager wrote that it reads from memory...
_RECENT_MAX_BYTES = 64 * 1024  # ...when they are at most this big, encoded


class SQLiteIOManager:
    """Stores values (through the core codec) as rows of one SQLite table.

    Args:
        path: the database file (created with its folder on first store).
        name: the name the manager is registered under.
        allow_pickle: also accept values JSON cannot encode, pickled (opt-in; loading a
            pickled value without the opt-in fails).

    Locations look like ``sqlite:<pipeline>/<asset>/<partition>/<run_id>[/aN][/item-N]``. They
    are table keys, never paths, so no name or partition can reach outside the table.

    A value is never changed once written (every attempt writes its own location), so the
    last few small values this manager wrote are also kept encoded in memory: a
    dependent that runs next reads them from there, decoded afresh (each reader gets its
    own copy), without a query.
    """

    __slots__ = (
        "_allow_pickle", "_checkpoints", "_conn", "_inherited", "_lock", "_path", "_pid",
        "_recent", "name",
    )  # fmt: skip

    def __init__(
        self,
        path: str | os.PathLike[str] = ".flowstone/values.db",
        *,
        name: str = "sqlite",
        allow_pickle: bool = False,
    ) -> None:
        self.name = name
        self._path = Path(path)
        self._allow_pickle = allow_pickle
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._checkpoints: WalCheckpointer | None = None  # the WAL copied in the background
        self._inherited: list[WalCheckpointer] = []  # through fork: never closed here
        self._recent: OrderedDict[str, tuple[Any, bytes]] = OrderedDict()

    def __repr__(self) -> str:
        return f"SQLiteIOManager(path={str(self._path)!r})"

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=10000")  # see sqlite_connection
            conn.execute(_SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(flowstone_values)")}
            if "written_at" not in columns:
                conn.execute(_WRITTEN_AT)  # rows written before have none: never pruned
            if self._checkpoints is not None:
                self._inherited.append(self._checkpoints)
            self._checkpoints = None if str(self._path) == ":memory:" else WalCheckpointer(
                str(self._path)
            )
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @staticmethod
    def _location(key: StorageKey) -> str:
        parts = [key.pipeline, key.asset, key.partition, key.run_id]
        if key.attempt:  # every attempt writes its own place (see StorageKey)
            parts.append(f"a{int(key.attempt)}")
        if key.item is not None:
            parts.append(f"item-{key.item}")
        return _PREFIX + "/".join(
            p if _UNQUOTED.fullmatch(p) else quote(p, safe="", errors="surrogatepass")
            for p in parts
        )

    @staticmethod
    def _check(location: str) -> str:
        if not isinstance(location, str) or not location.startswith(_PREFIX):
            raise UnsafeKeyError(f"{location!r} is not a SQLiteIOManager location")
        return location

    def store(self, key: StorageKey, value: object) -> str:
        encoded = encode_for_storage(value, asset=key.asset, allow_pickle=self._allow_pickle)
        location = self._location(key)
        self.write_staged([_Staged(self, location, encoded.format, encoded.data)])
        return location

    # --- staging (ValueStaging, PrefetchDecoding) ------------------------------------------
    @property
    def staging_target(self) -> str:
        """What a run store must accept to write this manager's staged values: the SQLite
        run store does (see :meth:`write_staged`)."""
        return STAGING_TARGET

    def stage(self, key: StorageKey, value: object) -> StagedValue:
        """Encode ``value`` for ``key`` without writing it: the SQLite run store writes it
        (:meth:`write_staged`) just before the transaction that records its step, together
        with the other values of a batch of finishes."""
        encoded = encode_for_storage(value, asset=key.asset, allow_pickle=self._allow_pickle)
        location = self._location(key)
        return StagedValue(
            location, STAGING_TARGET, _Staged(self, location, encoded.format, encoded.data),
            encoded=(encoded.format, encoded.data),
        )  # fmt: skip

    @property
    def prefetch_source(self) -> str | None:
        return None  # the store sends no values along; a staged value's own encoding is used

    def decode_prefetched(self, location: str, encoded: object) -> object:
        if not isinstance(encoded, tuple) or len(encoded) != 2:
            raise StorageError(f"{location}: not a value this manager staged")
        fmt, data = encoded  # (format, data), as stage() encoded it
        return decode_from_storage(
            EncodedValue(fmt, bytes(data)), allow_pickle=self._allow_pickle,
            location=location,
        )  # fmt: skip

    def write_staged(self, values: Sequence[_Staged]) -> None:
        """Write staged values (of this manager) in one transaction.

        Raises:
            StorageError: the file cannot be written (none of them is).
        """
        now = time.time_ns() // 1000
        rows = [(v.location, v.format, v.data, now) for v in values]
        try:
            with self._lock:
                conn = self._db()
                if len(rows) == 1:
                    conn.execute(_UPSERT, rows[0])
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.executemany(_UPSERT, rows)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                if self._checkpoints is not None:
                    self._checkpoints.committed()
                recent = self._recent
                for v in values:
                    recent.pop(v.location, None)
                    if len(v.data) <= _RECENT_MAX_BYTES:
                        recent[v.location] = (v.format, v.data)
                while len(recent) > _RECENT_VALUES:
                    recent.popitem(last=False)
        except sqlite3.Error as exc:
            where = values[0].location if len(values) == 1 else f"{len(values)} values"
            raise StorageError(f"storing {where} in {self._path} failed: {exc}") from exc

    def load(self, location: str) -> object:
        self._check(location)
        with self._lock:
            row = self._recent.get(location)
            if row is None:
                row = (
                    self._db()
                    .execute(
                        "SELECT format, data FROM flowstone_values WHERE location = ?",
                        (location,),
                    )
                    .fetchone()
                )
        if row is None:
            raise ValueNotFoundError(f"no value stored at {location} in {self._path}")
        return decode_from_storage(
            EncodedValue(row[0], bytes(row[1])),
            allow_pickle=self._allow_pickle,
            location=location,
        )

    def load_many(self, locations: Sequence[str]) -> list[object]:
        """The values at ``locations``, in order, in one query per 400 locations."""
        for location in locations:
            self._check(location)
        found: dict[str, tuple[Any, bytes]] = {}
        with self._lock:
            recent = self._recent
            unique: list[str] = []  # not among the recent values: read from the table
            for location in dict.fromkeys(locations):
                if (hit := recent.get(location)) is not None:
                    found[location] = hit
                else:
                    unique.append(location)
            for i in range(0, len(unique), BATCH):
                chunk = unique[i : i + BATCH]
                rows = self._db().execute(
                    "SELECT location, format, data FROM flowstone_values WHERE location IN "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update((loc, (fmt, data)) for loc, fmt, data in rows)
        out: list[object] = []
        for location in locations:
            if location not in found:
                raise ValueNotFoundError(f"no value stored at {location} in {self._path}")
            fmt, data = found[location]
            out.append(
                decode_from_storage(
                    EncodedValue(fmt, bytes(data)),
                    allow_pickle=self._allow_pickle,
                    location=location,
                )
            )
        return out

    def exists(self, location: str) -> bool:
        self._check(location)
        with self._lock:
            row = (
                self._db()
                .execute("SELECT 1 FROM flowstone_values WHERE location = ?", (location,))
                .fetchone()
            )
        return row is not None

    def delete(self, location: str) -> None:
        self._check(location)
        with self._lock:
            self._recent.pop(location, None)
            self._db().execute("DELETE FROM flowstone_values WHERE location = ?", (location,))

    def stored_before(
        self, cutoff: datetime, *, pipeline: str, since: datetime | None = None
    ) -> Iterator[str]:
        """Locations of ``pipeline``'s values written in ``[since, cutoff)``, in location
        order (see :class:`~flowstone.protocols.ValuePruning`), read a page at a time."""
        prefix = self._location(StorageKey(pipeline, "", "", "")).split("/")[0] + "/"
        end, before = prefix[:-1] + "0", int(cutoff.timestamp() * 1_000_000)
        first = 0 if since is None else int(since.timestamp() * 1_000_000)
        after = prefix
        while True:
            with self._lock:
                rows = self._db().execute(
                    "SELECT location FROM flowstone_values WHERE location > ? AND location < ?"
                    " AND written_at < ? AND written_at >= ? ORDER BY location LIMIT ?",
                    (after, end, before, first, BATCH),
                ).fetchall()
            yield from (str(r[0]) for r in rows)
            if len(rows) < BATCH:
                return
            after = str(rows[-1][0])

    def close(self) -> None:
        with self._lock:
            self._recent.clear()
            if self._checkpoints is not None and self._pid == os.getpid():
                self._checkpoints.close()
            self._checkpoints = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Staged:
    """A staged value's write (:attr:`StagedValue.payload`): the manager and the row."""

    __slots__ = ("data", "format", "location", "manager")

    def __init__(self, manager: SQLiteIOManager, location: str, fmt: str, data: bytes) -> None:
        self.manager, self.location, self.format, self.data = manager, location, fmt, data


def write_staged(values: Iterable[StagedValue]) -> None:
    """Write the staged values of :class:`SQLiteIOManager` s, one transaction per manager,
    before the run store records their steps (value first, record second: a crash in
    between leaves an orphan value, never a record without its value).

    Raises:
        StorageError: a value was staged by something else, or cannot be written.
    """
    by_manager: dict[int, list[_Staged]] = {}
    for value in values:
        payload = value.payload
        if value.target != STAGING_TARGET or not isinstance(payload, _Staged):
            raise StorageError(
                f"the value staged at {value.location} was not staged by a SQLiteIOManager "
                f"(target {value.target!r}); the SQLite run store writes only those"
            )
        by_manager.setdefault(id(payload.manager), []).append(payload)
    for staged in by_manager.values():
        staged[0].manager.write_staged(staged)
