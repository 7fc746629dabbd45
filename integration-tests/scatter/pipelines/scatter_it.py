"""Scatter scenarios for the integration tests (loaded by the test process and workers).

The partition key of each asset is the scenario's size or name, so each test gets a
fresh (run, asset, partition).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import redis

import flowstone as fs
from flowstone.readers import JsonLines
from flowstone.retry import RetryPolicy


@functools.cache
def _redis() -> redis.Redis:
    """The Redis holding the tests' counters: the broker's, unless FLOWSTONE_IT_COUNTS names
    another (a test that flushes its broker keeps its counters elsewhere)."""
    return redis.Redis.from_url(os.environ.get("FLOWSTONE_IT_COUNTS")
                                or os.environ["FLOWSTONE_BROKER_URL"])


def _key(name: str) -> str:
    """A Redis key of this test session (deleted with the session's other keys)."""
    return os.environ.get("FLOWSTONE_IT_KEYS", "fs-it:") + name


def _dir() -> Path:
    return Path(os.environ["FLOWSTONE_IT_DIR"])


@fs.asset
def numbers(context: fs.Context) -> list[int]:
    return list(range(int(str(context.partition).split("-")[0])))


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=400))
def squares(context: fs.Context, numbers: list[int]) -> int:
    item: int = context.scatter_item
    return item * item


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=4000))
def wide_squares(context: fs.Context, numbers: list[int]) -> int:
    """``squares`` with a wide window: room for chunks to grow past the first size."""
    item: int = context.scatter_item
    return item * item


@fs.asset
def total(squares: list[int]) -> int:
    return sum(squares)


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=20,
                             failure_threshold=0.05))
def flaky(context: fs.Context, numbers: list[int]) -> int:
    item: int = context.scatter_item
    if item % 5 == 0:
        raise ValueError(f"item {item} is a multiple of five")
    return item


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=16,
                             item_retry=RetryPolicy(max_attempts=3, base_delay=0.01)))
def counted(context: fs.Context, numbers: list[int]) -> int:
    """Counts every execution (in Redis) so tests can tell runs from recordings."""
    item: int = context.scatter_item
    _redis().incr(_key(f"exec:{context.run_id}"))
    if os.environ.get("FLOWSTONE_IT_SLOW"):
        time.sleep(0.004)
    return item + 1


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=40,
                             failure_threshold=0.1))
def once_flaky(context: fs.Context, numbers: list[int]) -> int:
    """Items 3, 28, 53, ... fail on their first execution only (counted per partition)."""
    item: int = context.scatter_item
    _redis().incr(_key(f"exec:{context.run_id}"))
    first = _redis().incr(_key(f"once:{context.partition}:{item}")) == 1
    if first and item % 25 == 3:
        raise ValueError(f"item {item} fails the first time")
    return item * 2


class KillingReader(JsonLines):
    """A JSON-lines reader that SIGKILLs its own process after page 3, once per file."""

    def __copy__(self) -> KillingReader:
        return KillingReader(self._path)

    def read(self, max_items: int) -> list[Any]:
        page = super().read(max_items)
        self.pages = getattr(self, "pages", 0) + 1
        marker = _dir() / "reader-killed"
        if self.pages == 3 and not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return page


@fs.asset(scatter=fs.Scatter(reader=KillingReader(lambda deps: _dir() / "items.jsonl"),
                             page_size=50, max_concurrent=40))
def read_items(context: fs.Context) -> int:
    _redis().incr(_key(f"exec:{context.run_id}"))
    return int(context.scatter_item["n"]) * 10


class SlowReader(JsonLines):
    """A JSON-lines reader whose second page takes FLOWSTONE_IT_READ_S seconds; counts its
    reads."""

    def __copy__(self) -> SlowReader:
        return SlowReader(self._path)

    def read(self, max_items: int) -> list[Any]:
        n = _redis().incr(_key("reads:slow-reader"))
        page = super().read(max_items)
        if n == 2:
            time.sleep(float(os.environ.get("FLOWSTONE_IT_READ_S", "0")))
        return page


@fs.asset(scatter=fs.Scatter(reader=SlowReader(lambda deps: _dir() / "slow-items.jsonl"),
                             page_size=50, max_concurrent=40))
def slow_read_items(context: fs.Context) -> int:
    return int(context.scatter_item["n"])


@fs.asset(scatter=fs.Scatter(items=lambda numbers: ["x" * (n % 7 + 1) for n in numbers],
                             batching=fs.Batching(max_bytes=40), max_concurrent=8))
def by_bytes(context: fs.Context, numbers: list[int]) -> list[dict[str, int]]:
    batch = context.batch
    assert batch is not None
    size = sum(len(f'"{s}"'.encode()) for s in batch.items)
    return [{"batch": batch.index, "bytes": size, "len": len(s)} for s in batch.items]


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, rate_limit="20/s",
                             max_concurrent=8, failure_threshold=0))
def limited(context: fs.Context, numbers: list[int]) -> list[float]:
    return [time.time(), os.getpid()]


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=4))
def all_fail(context: fs.Context, numbers: list[int]) -> int:
    """No failure threshold set: the first failed item fails the asset."""
    raise ConnectionError(f"host {context.scatter_item} refused the connection")


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=4))
def guessed_name(context: fs.Context, numbers: list[int]) -> int:
    """Uses ``context.item``, a natural guess for ``context.scatter_item``."""
    return int(context.item)  # type: ignore[attr-defined]


@fs.asset(scatter=fs.Scatter(items=lambda: [{"sku": s} for s in ("a", "b", "c")]))
def unpartitioned(context: fs.Context) -> str:
    return str(context.scatter_item["sku"]).upper()


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=40,
                             options={"chunk_size": 2}))
def slow_items(context: fs.Context, numbers: list[int]) -> int:
    """Counts every execution; each takes 50 ms, so most of a window's 20 messages wait in
    the queue (not prefetched by the worker)."""
    _redis().incr(_key(f"exec:{context.run_id}"))
    time.sleep(0.05)
    return int(context.scatter_item) * 3


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, rate_limit="1/s",
                             max_concurrent=4))
def one_per_second(context: fs.Context, numbers: list[int]) -> int:
    return int(context.scatter_item)


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=4))
def one_slow_item(context: fs.Context, numbers: list[int]) -> int:
    """Counts every execution; item 0 takes FLOWSTONE_IT_ITEM_S seconds."""
    item = int(context.scatter_item)
    _redis().incr(_key(f"exec:{context.run_id}"))
    if item == 0:
        time.sleep(float(os.environ.get("FLOWSTONE_IT_ITEM_S", "0")))
    return item


def _slow_gather(values: list[Any]) -> int:
    """Counts its runs per partition size, then takes FLOWSTONE_IT_GATHER_S seconds."""
    _redis().incr(_key(f"gather:{len(values)}"))
    time.sleep(float(os.environ.get("FLOWSTONE_IT_GATHER_S", "0")))
    return sum(values)


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers, max_concurrent=20,
                             gather=_slow_gather))
def gathered(context: fs.Context, numbers: list[int]) -> int:
    return int(context.scatter_item) + 1


pipeline = fs.Pipeline("scatter_it", [numbers, squares, wide_squares, total, flaky, counted,
                                      read_items,
                                      by_bytes, limited, once_flaky, all_fail, guessed_name,
                                      unpartitioned, slow_items, gathered, one_per_second,
                                      one_slow_item, slow_read_items])

if os.environ.get("FLOWSTONE_IT_DUPLICATE"):
    # Simulated at-least-once delivery: every scatter message is published twice.
    from flowstone_scatter.coordinator import CeleryScatterCoordinator

    _send = CeleryScatterCoordinator.send

    def _send_twice(self: Any, pipeline: Any, task: str, bodies: Any) -> None:
        _send(self, pipeline, task, list(bodies) * 2)

    CeleryScatterCoordinator.send = _send_twice  # type: ignore[method-assign]

if os.environ.get("FLOWSTONE_IT_UNAPPLIED_ONCE"):
    # Fault: the first completion of each scatter step is not applied (as when the finish
    # of another finalizer was refused, or its store call failed after the gate was taken):
    # complete_deferred reports applied=False and the step stays waiting.
    import flowstone_scatter.coordinator as _coordinator

    _complete = _coordinator.complete_deferred

    def _unapplied_once(runner: Any, token: str, **kw: Any) -> tuple[str, bool]:
        if _redis().incr(_key(f"unapplied:{token[:16]}")) == 1:
            return "", False
        return _complete(runner, token, **kw)

    _coordinator.complete_deferred = _unapplied_once  # type: ignore[assignment]
