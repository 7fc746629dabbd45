"""``WalCheckpointer``: copies a SQLite file's write-ahead log into it from a thread of its own.

SQLite checkpoints the log itself (``wal_autocheckpoint``) inside the ``COMMIT`` that
crosses the limit: that commit fsyncs everything logged since the last checkpoint (about
45 MB for a 500-asset run: 20-30 ms on the benchmark VM) while the store's lock is held,
so every worker waits for it. This thread, with its own connection, runs a ``PASSIVE``
checkpoint (one never blocks a writer or a reader) after every ``every`` commits, at most
every ``interval`` seconds. SQLite's own checkpoint then finds the log mostly copied and
fsynced already and has little left to do (measured: the commits of a 500-asset run took
43-58 ms instead of 71-78 ms).

Durability is unchanged: commits are written exactly as before (the same ``synchronous``
setting), and a checkpoint only moves committed pages from the log into the database file,
with the fsyncs SQLite's own checkpoint makes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ["WalCheckpointer"]

log = logging.getLogger("flowstone.store")


class WalCheckpointer:
    """Checkpoints the WAL of the database at ``path`` in the background (see the module).

    Nothing runs until :meth:`committed` has been called ``every`` times; :meth:`close`
    stops the thread and closes its connection.
    """

    __slots__ = ("_commits", "_conn", "_due", "_every", "_interval", "_path", "_stop", "_thread")

    def __init__(self, path: str, *, every: int = 32, interval: float = 0.02) -> None:
        self._path = path
        self._every = every
        self._interval = interval
        self._commits = 0
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # kept here (not only in the thread's frame): a forked child must never close it
        self._conn: sqlite3.Connection | None = None

    def committed(self) -> None:
        """A write transaction committed (called under the store's lock)."""
        self._commits += 1
        if self._commits < self._every or self._stop.is_set():
            return
        self._commits = 0
        if self._thread is None:
            thread = threading.Thread(target=self._loop, name="flowstone-checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: SQLite checkpoints as before
                log.debug("no background checkpoints for %s: %s", self._path, exc)
                self._stop.set()
                return
            self._thread = thread
        self._due.set()

    def _loop(self) -> None:
        try:
            conn = self._conn = sqlite3.connect(
                self._path, timeout=0.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous = NORMAL")  # the store's: the same fsyncs
        except sqlite3.Error as exc:
            log.debug("no background checkpoints for %s: %s", self._path, exc)
            return
        try:
            while not self._stop.is_set():
                self._due.wait()
                self._due.clear()
                if self._stop.is_set():
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy, or the file went away: SQLite's own will do
                    log.debug("background checkpoint of %s skipped: %s", self._path, exc)
                self._stop.wait(self._interval)  # at most one checkpoint per interval
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._due.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
