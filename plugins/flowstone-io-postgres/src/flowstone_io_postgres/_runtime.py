"""A private asyncio loop in a daemon thread, owning an AsyncEngine, bridged to sync callers.

The FlowStone protocols are synchronous, SQLAlchemy's asyncpg support is asynchronous. Each
store (and IO manager, and reader) owns one :class:`AsyncRuntime`: a daemon thread running an
event loop, started on first use. Sync callers from any thread submit a coroutine with
:func:`asyncio.run_coroutine_threadsafe` and block on the result; the engine's connection pool
lives on that one loop, so connections are never shared across loops.

Fork safety (Celery prefork): a forked child inherits the parent's objects but not its
threads, and must never touch the parent's sockets. Every call compares ``os.getpid()`` with
the pid that created the loop; on a mismatch the inherited loop and engine are abandoned
(kept referenced, never closed, so no garbage-collection finaliser writes to a socket the
parent still uses) and a fresh loop and engine are created in the child.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["AsyncRuntime", "EngineOptions"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Connection settings applied to every engine a runtime creates."""

    pool_size: int = 5
    max_overflow: int = 5
    connect_timeout: float = 10.0
    statement_timeout_ms: int = 60_000
    lock_timeout_ms: int = 30_000
    application_name: str = "flowstone"


class _Loop:
    __slots__ = ("autocommit", "engine", "loop", "pid", "thread")

    def __init__(self, url: URL, options: EngineOptions, name: str) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=options.pool_size,
            max_overflow=options.max_overflow,
            pool_pre_ping=False,
            connect_args={
                "timeout": options.connect_timeout,
                # Server-side limits instead of per-transaction SET LOCAL round trips.
                "server_settings": {
                    "application_name": options.application_name,
                    "statement_timeout": str(options.statement_timeout_ms),
                    "lock_timeout": str(options.lock_timeout_ms),
                    "idle_in_transaction_session_timeout": str(
                        max(options.statement_timeout_ms, 60_000)
                    ),
                },
            },
        )
        # Single-statement calls run outside an explicit transaction: no BEGIN/COMMIT trips.
        self.autocommit: AsyncEngine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self) -> None:
        async def dispose() -> None:
            await self.engine.dispose()

        try:
            asyncio.run_coroutine_threadsafe(dispose(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            if not self.thread.is_alive():
                self.loop.close()


class AsyncRuntime:
    """Runs coroutines against one AsyncEngine on a private, lazily started loop thread.

    Thread-safe; safe to use in forked children (see the module docstring).
    """

    __slots__ = ("_abandoned", "_current", "_lock", "_name", "_options", "url")

    def __init__(self, url: URL, options: EngineOptions | None = None, *, name: str) -> None:
        self.url = url
        self._options = options or EngineOptions()
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

    def run(self, work: Callable[[AsyncEngine, AsyncEngine], Awaitable[T]]) -> T:
        """Run ``work(engine, autocommit_engine)`` on the loop and return its result."""
        loop = self._loop()
        if threading.current_thread() is loop.thread:
            raise RuntimeError("FlowStone's Postgres bridge cannot be called from its own loop")
        future = asyncio.run_coroutine_threadsafe(
            _call(work, loop.engine, loop.autocommit), loop.loop
        )
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Dispose the engine and stop the loop thread; a later call starts them again."""
        with self._lock:
            current, self._current = self._current, None
        if current is not None and current.pid == os.getpid():
            current.stop()


async def _call(
    work: Callable[[AsyncEngine, AsyncEngine], Awaitable[T]], engine: AsyncEngine, auto: Any
) -> T:
    return await work(engine, auto)
