"""The pipeline the UI's browser tests drive (loaded by the test process and the workers)."""

from __future__ import annotations

import time
from typing import Any

import flowstone as fs


@fs.asset
def orders(context: fs.Context) -> list[int]:
    """Order amounts; the partition says how many."""
    return list(range(1, int(str(context.partition or "20")) + 1))


@fs.asset(scatter=fs.Scatter(items=lambda orders: orders, max_concurrent=8))
def priced(context: fs.Context, orders: list[int]) -> int:
    time.sleep(0.03)  # slow enough for the progress bar to be seen moving
    item: int = context.scatter_item
    return item * 3


@fs.asset(scatter=fs.Scatter(items=lambda orders: orders, failure_threshold=0.5))
def checked(context: fs.Context, orders: list[int]) -> int:
    item: int = context.scatter_item
    if item % 4 == 0:
        raise ValueError(f"order {item} looks wrong")
    return item


@fs.asset
def revenue(priced: list[int]) -> int:
    return sum(priced)


@fs.router(branches=["small_order", "large_order"])
def size(revenue: int) -> str:
    return "small_order" if revenue < 1000 else "large_order"


@fs.asset(routed_from="size")
def small_order(revenue: int) -> str:
    return f"small: {revenue}"


@fs.asset(routed_from="size")
def large_order(revenue: int) -> str:
    return f"large: {revenue}"


@fs.asset(optional_deps=["small_order", "large_order"])
def report(small_order: str | None = None, large_order: str | None = None) -> str:
    return small_order or large_order or ""


@fs.asset
def payout(revenue: int) -> Any:
    return fs.WaitForApproval(message=f"pay out {revenue}?", value={"amount": revenue})


@fs.asset
def paid(payout: dict[str, int]) -> str:
    return f"paid {payout['amount']}"


@fs.asset(partitions=fs.DailyPartitions("2026-01-01", "2026-12-31"))
def daily_sales(context: fs.Context) -> int:
    return int(context.partition.day)


pipeline = fs.Pipeline("ui_it", [orders, priced, checked, revenue, size, small_order, large_order,
                                 report, payout, paid, daily_sales])
