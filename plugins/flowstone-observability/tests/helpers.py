"""Small pipelines the tests run in-process (memory or SQLite store, no services)."""

from __future__ import annotations

from datetime import date
from typing import Any

from prometheus_client import CollectorRegistry

import flowstone as fs

DAYS = fs.DailyPartitions(start=date(2024, 1, 1), end=date(2024, 1, 10))


def etl(observers: list[Any], store: str = "memory://", **kwargs: Any) -> fs.Pipeline:
    """source -> doubled -> total, a router with two branches, a failing asset,
    a scatter over 4 items (one fails unless ok_items), a parallel join, and a daily
    partitioned asset."""

    @fs.asset
    def source() -> list[int]:
        return [1, 2, 3]

    @fs.asset
    def doubled(context: fs.Context, source: list[int]) -> list[int]:
        context.log.info("doubling %d numbers", len(source))
        return [n * 2 for n in source]

    @fs.asset
    def total(doubled: list[int]) -> int:
        return sum(doubled)

    @fs.router(branches=["small", "large"])
    def size(total: int) -> str:
        return "small" if total < 100 else "large"

    @fs.asset(routed_from="size")
    def small(total: int) -> str:
        return "small"

    @fs.asset(routed_from="size")
    def large(total: int) -> str:
        return "large"

    @fs.asset
    def broken(source: list[int]) -> int:
        raise ValueError("broken on purpose")

    @fs.asset(scatter=fs.Scatter(items=lambda source: [{"n": n} for n in [*source, 4]]))
    def squares(context: fs.Context, source: list[int]) -> int:
        return int(context.scatter_item["n"]) ** 2

    @fs.asset
    def left(source: list[int]) -> int:
        return len(source)

    @fs.asset
    def right(source: list[int]) -> int:
        return sum(source)

    @fs.asset(parallel=fs.Parallel(branches={"l": "left", "r": "right"}))
    def joined(branches: dict[str, Any], source: list[int]) -> dict[str, Any]:
        return dict(branches)

    @fs.asset(partitions=DAYS)
    def daily(context: fs.Context) -> str:
        return str(context.partition)

    return fs.Pipeline(
        "etl",
        [source, doubled, total, size, small, large, broken, squares, left, right, joined,
         daily],
        store=store,
        observers=observers,
        **kwargs,
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def series(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) the registry exports, without timestamps."""
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in registry.collect()
        for s in family.samples
    }
