"""Scatter assets for the seed tests (single-transaction barrier, backpressure, bulk insert).

Partition keys start with the item count (``"300-atomic"``), so every test gets a fresh
``(run, asset, partition)``. Redis keys carry ``$FLOWSTONE_IT_KEYS`` (deleted with the session).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import redis

import flowstone as fs

WINDOW = 20
"""``max_concurrent`` of :func:`windowed`."""


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["FLOWSTONE_BROKER_URL"])


def key(name: str) -> str:
    """A Redis key of this test session."""
    return os.environ.get("FLOWSTONE_IT_KEYS", "fs-it:") + "seed:" + name


@fs.asset
def seed_numbers(context: fs.Context) -> list[int]:
    return list(range(int(str(context.partition).split("-")[0])))


def _gather_counted(values: list[Any]) -> int:
    """Counts its calls (per item count): a gather must run exactly once."""
    _redis().incr(key(f"gathers:{len(values)}"))
    return sum(values)


@fs.asset(scatter=fs.Scatter(items=lambda seed_numbers: seed_numbers, max_concurrent=50,
                             gather=_gather_counted))
def atomic(context: fs.Context, seed_numbers: list[int]) -> int:
    item: int = context.scatter_item
    return item


@fs.asset(scatter=fs.Scatter(items=lambda seed_numbers: seed_numbers, max_concurrent=WINDOW))
def windowed(context: fs.Context, seed_numbers: list[int]) -> int:
    """Keeps a count of the items running right now (and each value it reached)."""
    running = key(f"running:{context.run_id}")
    now = _redis().incr(running)
    _redis().rpush(key(f"peaks:{context.run_id}"), now)
    try:
        time.sleep(0.005)
        return int(context.scatter_item)
    finally:
        _redis().decr(running)


@fs.asset(scatter=fs.Scatter(items=lambda seed_numbers: seed_numbers, max_concurrent=1))
def bulk(context: fs.Context, seed_numbers: list[int]) -> int:
    return int(context.scatter_item)


@fs.asset(scatter=fs.Scatter(
    items=lambda: [{"id": "small", "body": "x"}, {"id": "big", "body": "x" * (2 << 20)}],
    key=lambda item: item["id"]))
def big_items(context: fs.Context) -> int:
    """One item of 2 MiB: over the payload limit, with a key well under the key limit."""
    return len(context.scatter_item["body"])


pipeline = fs.Pipeline("scatter_seed", [seed_numbers, atomic, windowed, bulk, big_items])
