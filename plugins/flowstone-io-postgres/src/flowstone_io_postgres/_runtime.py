"""A private asyncio loop in a daemon thread, owning asyncpg connections, bridged to sync callers.

The FlowStone protocols are synchronous, asyncpg is asynchronous. Each store (and IO
manager, and reader) owns one :class:`AsyncRuntime`: a daemon thread running an event loop,
started on first use. Sync callers from any thread submit a coroutine and block on the
result; the connections live on that one loop, so they are never shared across loops.

Why asyncpg directly, and why not ``asyncpg.Pool``: a hot call is one prepared statement
(Bind + Execute, ~0.2-0.5 ms on a local server). SQLAlchemy's async layer added ~1 ms of
CPU a call; ``asyncpg.Pool`` runs a reset query (``RESET ALL; UNLISTEN *...``) on every
release -- a second round trip -- and even without it its acquire/release bookkeeping cost
~0.1-0.2 ms of CPU, as much as the statement. FlowStone never changes session state, so
:class:`Connections` just keeps idle connections on a stack. The hand-off to the loop
thread is a bare lock, not ``run_coroutine_threadsafe`` (another ~0.1 ms a call).

Fork safety (Celery prefork): a forked child inherits the parent's objects but not its
threads, and must never touch the parent's sockets. Every call compares ``os.getpid()`` with
the pid that created the loop; on a mismatch the inherited loop and connections are
abandoned
(kept referenced, never closed, so no garbage-collection finaliser writes to a socket the
parent still uses) and a fresh loop and connections are created in the child.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from sqlalchemy.engine import URL

__all__ = ["AsyncRuntime", "Connections", "PoolOptions", "dsn"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """Connection settings applied to every connection a runtime opens."""

    max_size: int = 10
    connect_timeout: float = 10.0
    statement_timeout_ms: int = 60_000
    lock_timeout_ms: int = 30_000
    application_name: str = "flowstone"
    statement_cache_size: int = 256


def dsn(url: URL) -> str:
    """The libpq-style DSN asyncpg expects (``postgresql://``, password kept)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Connections:
    """The loop's connections: an idle stack and at most ``max_size`` open at once.

    A lean stand-in for ``asyncpg.Pool`` (whose acquire/release bookkeeping -- queue,
    timeouts, reset query -- cost more CPU than the statement itself). Lives on one loop.
    A connection that saw anything but a server-reported error (a lost socket, a
    cancellation mid-statement) is terminated instead of reused.
    """

    def __init__(self, dsn: str, options: PoolOptions) -> None:
        self._dsn = dsn
        self._options = options
        self._idle: list[asyncpg.Connection] = []
        self._slots = asyncio.Semaphore(options.max_size)  # binds to the loop on first use

    async def _acquire(self) -> asyncpg.Connection:
        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():  # the server may have closed it while idle
                    return conn
            o = self._options
            return await asyncpg.connect(
                self._dsn,
                timeout=o.connect_timeout,
                statement_cache_size=o.statement_cache_size,
                # Server-side limits instead of per-transaction SET LOCAL round trips.
                server_settings={
                    "application_name": o.application_name,
                    "statement_timeout": str(o.statement_timeout_ms),
                    "lock_timeout": str(o.lock_timeout_ms),
                    "idle_in_transaction_session_timeout": str(
                        max(o.statement_timeout_ms, 60_000)
                    ),
                },
            )
        except BaseException:
            self._slots.release()
            raise

    def _release(self, conn: asyncpg.Connection, healthy: bool) -> None:
        self._slots.release()
        if healthy and not conn.is_closed() and not conn.is_in_transaction():
            self._idle.append(conn)
        else:
            conn.terminate()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for several statements (e.g. a transaction)."""
        conn = await self._acquire()
        healthy = False
        try:
            yield conn
            healthy = True
        except asyncpg.PostgresError:
            healthy = True  # the server answered: the connection itself is fine
            raise
        finally:
            self._release(conn, healthy)

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """One statement on an idle connection (autocommit: one round trip)."""
        async with self.connection() as conn:
            return list(await conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        """The first row of one statement, or None."""
        async with self.connection() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first value of one statement, or None."""
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


class _Loop:
    __slots__ = ("db", "loop", "pid", "thread")

    def __init__(self, url: URL, options: PoolOptions, name: str) -> None:
        self.pid = os.getpid()
        self.db = Connections(dsn(url), options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self) -> None:
        call = _Call(lambda db: db.close())
        try:
            self.loop.call_soon_threadsafe(call.start, self)
            call.wait(self, timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            if not self.thread.is_alive():
                self.loop.close()


class _Call(Generic[T]):
    """One coroutine handed to the loop thread; the caller blocks on a bare lock.

    Leaner than ``asyncio.run_coroutine_threadsafe`` (no concurrent Future, no callback
    chaining): the loop runs ``work`` as a task and releases the lock when it ends.
    """

    __slots__ = ("done", "error", "result", "task", "work")

    def __init__(self, work: Callable[[Connections], Awaitable[T]]) -> None:
        self.work = work
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.error: BaseException | None = None
        self.result: T | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, owner: _Loop) -> None:  # on the loop thread
        self.task = owner.loop.create_task(self._run(owner.db))

    async def _run(self, db: Connections) -> None:
        try:
            self.result = await self.work(db)
        except BaseException as exc:  # handed to the caller, re-raised there
            self.error = exc
        finally:
            self.done.release()

    def _cancel(self) -> None:  # on the loop thread
        if self.task is not None:
            self.task.cancel()

    def wait(self, owner: _Loop, timeout: float = -1) -> T:
        try:
            if not self.done.acquire(timeout=timeout):
                raise TimeoutError("the Postgres loop thread did not answer")
        except BaseException:
            owner.loop.call_soon_threadsafe(self._cancel)
            raise
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self.result  # type: ignore[return-value]


class AsyncRuntime:
    """Runs coroutines against one set of connections on a private, lazily started loop thread.

    Thread-safe; safe to use in forked children (see the module docstring).
    """

    __slots__ = ("_abandoned", "_current", "_lock", "_name", "_options", "url")

    def __init__(self, url: URL, options: PoolOptions | None = None, *, name: str) -> None:
        self.url = url
        self._options = options or PoolOptions()
        self._name = name
        self._lock = threading.Lock()
        self._current: _Loop | None = None
        self._abandoned: list[_Loop] = []

    def _loop(self) -> _Loop:
        current = self._current
        if current is not None and current.pid == os.getpid():
            return current
        with self._lock:
            current = self._current
            if current is not None and current.pid != os.getpid():
                self._abandoned.append(current)
                current = None
            if current is None:
                current = _Loop(self.url, self._options, self._name)
                self._current = current
            return current

    def run(self, work: Callable[[Connections], Awaitable[T]]) -> T:
        """Run ``work(connections)`` on the loop and return its result (or raise its error)."""
        loop = self._loop()
        if threading.current_thread() is loop.thread:
            raise RuntimeError("FlowStone's Postgres bridge cannot be called from its own loop")
        call = _Call(work)
        loop.loop.call_soon_threadsafe(call.start, loop)
        return call.wait(loop)

    def close(self) -> None:
        """Close the connections and stop the loop thread; a later call starts them again."""
        with self._lock:
            current, self._current = self._current, None
        if current is not None and current.pid == os.getpid():
            current.stop()
