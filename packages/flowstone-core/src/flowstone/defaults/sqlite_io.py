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
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flowstone.codec import EncodedValue, decode_from_storage, encode_for_storage
from flowstone.defaults.sqlite_checkpoints import WalCheckpointer
from flowstone.defaults.sqlite_connection import BATCH
from flowstone.errors import StorageError, UnsafeKeyError, ValueNotFoundError
from flowstone.protocols import StorageKey

__all__ = ["SQLiteIOManager"]

_PREFIX = "sqlite:"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS flowstone_values (
    location   TEXT PRIMARY KEY,
    format     TEXT NOT NULL,
    data       BLOB NOT NULL,
    written_at INTEGER
)
"""
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
        try:
            with self._lock:
                self._db().execute(
                    "INSERT INTO flowstone_values(location, format, data, written_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT(location) DO UPDATE"
                    " SET format = excluded.format, data = excluded.data,"
                    " written_at = excluded.written_at",
                    (location, encoded.format, encoded.data, time.time_ns() // 1000),
                )
                if self._checkpoints is not None:
                    self._checkpoints.committed()
                self._recent.pop(location, None)
                if len(encoded.data) <= _RECENT_MAX_BYTES:
                    self._recent[location] = (encoded.format, encoded.data)
                    if len(self._recent) > _RECENT_VALUES:
                        self._recent.popitem(last=False)
        except sqlite3.Error as exc:
            raise StorageError(f"storing {location} in {self._path} failed: {exc}") from exc
        return location

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
