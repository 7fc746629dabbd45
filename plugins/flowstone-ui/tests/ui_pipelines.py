"""Pipelines the UI's unit tests serve (plain module-level assets, as users write them)."""

from __future__ import annotations

from typing import Any

import flowstone as fs


@fs.asset
def numbers() -> list[int]:
    return [1, 2, 3, 4]


@fs.asset
def doubled(numbers: list[int]) -> list[int]:
    return [n * 2 for n in numbers]


@fs.router(branches=["small", "large"])
def size(doubled: list[int]) -> str:
    return "small" if sum(doubled) < 100 else "large"


@fs.asset(routed_from="size")
def small(doubled: list[int]) -> str:
    return f"small: {sum(doubled)}"


@fs.asset(routed_from="size")
def large(doubled: list[int]) -> str:
    return f"large: {sum(doubled)}"


@fs.asset(optional_deps=["small", "large"])
def handled(small: str | None = None, large: str | None = None) -> str:
    return small or large or ""


@fs.asset(scatter=fs.Scatter(items=lambda numbers: [{"n": n} for n in numbers],
                             failure_threshold=0.9))
def squares(context: fs.Context, numbers: list[int]) -> int:
    n = context.scatter_item["n"]
    if n == 3:
        raise ValueError("three is not welcome")
    return int(n) ** 2


@fs.asset
def review(doubled: list[int]) -> Any:
    return fs.WaitForApproval(message="ship these numbers?", value={"total": sum(doubled)})


@fs.asset
def shipped(review: dict[str, int]) -> int:
    return review["total"]


@fs.asset
def broken(context: fs.Context, numbers: list[int]) -> int:
    context.log.info("checking %d numbers", len(numbers))
    raise RuntimeError("this asset always fails")


@fs.asset(partitions=fs.StaticPartitions([f"k{i:04d}" for i in range(1200)]))
def keyed(context: fs.Context) -> str:
    return str(context.partition)


@fs.asset(partitions=fs.MultiPartitions({
    "day": fs.DailyPartitions("2024-01-01", "2024-03-31"),
    "region": fs.StaticPartitions(["eu", "us", "apac"]),
    "tier": fs.StaticPartitions(["gold", "free"]),
}))
def regional(context: fs.Context) -> str:
    return str(context.partition)


ASSETS = [numbers, doubled, size, small, large, handled, squares, review, shipped, broken,
          keyed, regional]
