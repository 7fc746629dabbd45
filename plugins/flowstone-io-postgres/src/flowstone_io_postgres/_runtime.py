"""A private asyncio loop owning asyncpg connections, run by the sync callers themselves.

The FlowStone protocols are synchronous, asyncpg is asynchronous. Each store (and IO
manager, and reader) owns one :class:`AsyncRuntime`: an event loop and its connections.
Plugins that keep tables in the FlowStone database (flowstone-scatter) run their statements
on the run store's runtime (:attr:`~flowstone_io_postgres.PostgresRunStore.runtime`)
instead of opening connections of their own
(:meth:`~flowstone_io_postgres.PostgresRunStore.run_on_connection`).
There is no loop thread: a caller runs the loop itself until its own statement is done
(``run_until_complete``), so a call costs no thread switch -- measured on
``PostgresRunStore.get_run``: 104 us of CPU a call, against 170 us when the coroutine was
handed to a loop thread and waited for.
When several threads call at once, one of them runs the loop (the *leader*) and the others
queue their coroutines on it and wait; their statements run concurrently on separate
connections, and when the leader's own call ends, a waiting thread whose call is still
in flight takes the loop over (leader/followers). A thread that is already running some
other asyncio loop (a notebook, an async web app) cannot run a second one, so its calls
are run from a small helper thread pool instead.

Why asyncpg directly, and why not ``asyncpg.Pool``: a hot call is one prepared statement
(Bind + Execute, ~0.2-0.5 ms on a local server). SQLAlchemy's async layer added ~1 ms of
CPU a call; ``asyncpg.Pool`` runs a reset query (``RESET ALL; UNLISTEN *...``) on every
release -- a second round trip -- and even without it its acquire/release bookkeeping cost
~0.1-0.2 ms of CPU, as much as the statement. FlowStone never changes session state, so
:class:`Connections` just keeps idle connections on a stack.

Fork safety (Celery prefork): a forked child inherits the parent's objects but not its
threads, and must never touch the parent's sockets. Every call compares ``os.getpid()`` with
the pid that created the loop; on a mismatch the inherited loop and connections are
abandoned
(kept referenced, never closed, so no garbage-collection finaliser writes to a socket the
parent still uses) and a fresh loop and connections are created in the child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import select
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
    cancellation mid-statement) is terminated instead of reused, and an idle one the server
    closed meanwhile is noticed before use and replaced (:func:`_idle_and_open`).
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
                if _idle_and_open(conn):
                    return conn
                conn.terminate()  # closed by the server while idle: open a fresh one
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

    # The one-statement calls are the hot path: acquire and release inline (the same rules
    # as ``connection()``, without an async generator per call).
    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """One statement on an idle connection (autocommit: one round trip)."""
        return await self._on_idle(lambda conn: conn.fetch(query, *args))

    async def fetchmany(self, query: str, args: list[list[Any]]) -> list[Any]:
        """One statement for each of ``args``, sent together (one round trip, one implicit
        transaction: all of them apply or none); the rows of all of them."""
        return await self._on_idle(lambda conn: conn.fetchmany(query, args))

    async def _on_idle(
        self, call: Callable[[asyncpg.Connection], Awaitable[Any]]
    ) -> list[Any]:
        conn = await self._acquire()
        healthy = False
        try:
            rows = await call(conn)
            healthy = True
            return list(rows)
        except asyncpg.PostgresError:
            healthy = True
            raise
        finally:
            self._release(conn, healthy)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        """The first row of one statement, or None."""
        rows = await self.fetch(query, *args)
        return rows[0] if rows else None

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first value of one statement, or None."""
        row = await self.fetchrow(query, *args)
        return None if row is None else row[0]

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


def _idle_and_open(conn: asyncpg.Connection) -> bool:
    """Whether an idle connection can take a statement: open, and nothing on its socket.

    ``conn.is_closed()`` alone misses a connection the server closed while it sat idle
    (``pg_terminate_backend``, a server restart, an idle timeout): our loop runs only during
    calls, so the server's goodbye (an ``ErrorResponse`` then EOF) is still unread in the
    socket and asyncpg has not noticed it yet. An idle connection has nothing to read, so
    anything readable (or a hang-up) means it is gone -- or at least not in a state to
    reuse; one non-blocking ``poll`` of the socket tells, without a round trip.
    """
    if conn.is_closed():
        return False
    transport = getattr(conn, "_transport", None)  # asyncpg keeps no public handle on it
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop this thread is running, if any (the public API only raises when none)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Loop:
    """One event loop and its connections, run by whichever calling thread needs it."""

    __slots__ = ("_helpers", "cond", "db", "leader", "loop", "name", "pid", "waiting")

    def __init__(self, url: URL, options: PoolOptions, name: str) -> None:
        self.pid = os.getpid()
        self.name = name
        self.db = Connections(dsn(url), options)
        self.loop = asyncio.new_event_loop()
        self.cond = threading.Condition(threading.Lock())
        self.leader: int | None = None  # the thread running the loop now
        # threads waiting on ``cond`` (written under it; read without it by the loop, which
        # notifies only when someone waits -- a follower re-checks its call under the lock
        # before waiting, so it cannot miss the notification)
        self.waiting = 0
        self._helpers: concurrent.futures.ThreadPoolExecutor | None = None

    def run(self, work: Callable[[Connections], Awaitable[T]]) -> T:
        """Run ``work`` on the loop and return its result (or raise its error)."""
        running = _running_loop()
        if running is self.loop:  # a coroutine of ours calling back in: it would wait forever
            raise RuntimeError("FlowStone's Postgres bridge cannot be called from its own loop")
        if running is not None:
            return self._from_helper(work)  # this thread already runs another loop
        me = threading.get_ident()
        call = _Call(work, self)
        with self.cond:
            lead = self.leader is None
            if lead:
                self.leader = me
            else:  # the leader's loop starts it; we wait for it or for the loop
                self.loop.call_soon_threadsafe(call.start)
        if lead:
            call.start()
        while True:
            if lead:
                try:
                    self.loop.run_until_complete(call.finished)
                except BaseException:
                    call.cancel()
                    raise
                finally:
                    with self.cond:
                        self.leader = None
                        if self.waiting:
                            self.cond.notify_all()
                return call.outcome()
            with self.cond:
                self.waiting += 1
                try:
                    while self.leader is not None and not call.finished.done():
                        self.cond.wait()
                finally:
                    self.waiting -= 1
                if call.finished.done():
                    return call.outcome()
                self.leader = me  # our statement is still in flight: run the loop ourselves
                lead = True

    def _from_helper(self, work: Callable[[Connections], Awaitable[T]]) -> T:
        with self.cond:
            if self._helpers is None:
                self._helpers = concurrent.futures.ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix=self.name
                )
            helpers = self._helpers
        return helpers.submit(self.run, work).result()

    def stop(self) -> None:
        try:
            self.run(lambda db: db.close())
        finally:
            with self.cond:
                idle = self.leader is None
            if idle:
                self.loop.close()
            if self._helpers is not None:
                self._helpers.shutdown(wait=False)


class _Call(Generic[T]):
    """One coroutine on the loop; ``finished`` (a loop future) is done when it ended."""

    __slots__ = ("error", "finished", "owner", "result", "task", "work")

    def __init__(self, work: Callable[[Connections], Awaitable[T]], owner: _Loop) -> None:
        self.work = work
        self.owner = owner
        # a bare Future: creating one touches no loop state, so any thread may
        self.finished: asyncio.Future[None] = owner.loop.create_future()
        self.error: BaseException | None = None
        self.result: T | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:  # by the thread running the loop (or about to)
        self.task = self.owner.loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            self.result = await self.work(self.owner.db)
        except BaseException as exc:  # handed to the caller, re-raised there
            self.error = exc
        finally:
            self.finished.set_result(None)
            if self.owner.waiting:  # a waiting follower may be this call's caller
                with self.owner.cond:
                    self.owner.cond.notify_all()

    def cancel(self) -> None:  # by the leader, after the loop stopped abnormally
        if self.task is not None:
            self.task.cancel()

    def outcome(self) -> T:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self.result  # type: ignore[return-value]


class AsyncRuntime:
    """Runs coroutines against one set of connections on a private, lazily created loop.

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
        """Run ``work(connections)`` on the loop and return its result (or raise its error).

        The calling thread runs the loop itself (or waits for the thread that does); a
        thread already running another asyncio loop has the call run by a helper thread.
        """
        return self._loop().run(work)

    def close(self) -> None:
        """Close the connections and the loop; a later call opens new ones."""
        with self._lock:
            current, self._current = self._current, None
        if current is not None and current.pid == os.getpid():
            current.stop()
