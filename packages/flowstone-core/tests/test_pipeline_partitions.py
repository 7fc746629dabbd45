"""Partitioned pipelines: daily ETL with yesterday's state, rollups, static, multi, dynamic keys."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from conftest import Counter, PipelineFactory

import flowstone as fs

DAYS = fs.DailyPartitions("2024-01-01", "2024-01-05")


def _daily_etl(seen: list[Any]) -> list[fs.AssetDef]:
    @fs.asset(partitions=DAYS)
    def daily_sales(context: fs.Context) -> int:
        seen.append(context.partition)
        return context.partition.day * 10

    @fs.asset(
        partitions=DAYS,
        deps=["daily_sales"],
        partition_mappings={"daily_sales": fs.TimeWindowOffset(-1)},
        optional_deps=["daily_sales"],
    )
    def previous_sales(daily_sales: int | None = None) -> int | None:
        return daily_sales

    @fs.asset(partitions=DAYS)
    def growth(daily_sales: int, previous_sales: int | None) -> int | None:
        return None if previous_sales is None else daily_sales - previous_sales

    @fs.asset(partition_mappings={"daily_sales": fs.AllPartitions()})
    def month_total(daily_sales: dict[date, int]) -> int:
        return sum(daily_sales.values())

    return [daily_sales, previous_sales, growth, month_total]


def test_daily_etl_with_previous_day_dependency(make_pipeline: PipelineFactory) -> None:
    seen: list[Any] = []
    p = make_pipeline(_daily_etl(seen))
    result = p.run("growth", date(2024, 1, 3))
    assert result.value == 10
    assert result.partition == date(2024, 1, 3)
    assert sorted(seen) == [date(2024, 1, 2), date(2024, 1, 3)]
    assert all(type(k) is date for k in seen)  # the key keeps its type
    assert p.get("daily_sales", date(2024, 1, 2)) == 20
    # the first day has no "yesterday" inside the set: the optional dep gets its default
    assert p.run("growth", date(2024, 1, 1)).value is None


def test_all_partitions_rollup(make_pipeline: PipelineFactory) -> None:
    seen: list[Any] = []
    p = make_pipeline(_daily_etl(seen))
    assert p.run("month_total").value == sum(d * 10 for d in range(1, 6))
    assert len(seen) == 5


def test_key_outside_the_set_is_rejected_clearly(make_pipeline: PipelineFactory) -> None:
    p = make_pipeline(_daily_etl([]))
    with pytest.raises(
        fs.PartitionError, match=r"asset .daily_sales.: .*2024-01-01 \.\. 2024-01-05"
    ):
        p.run("daily_sales", date(2023, 12, 31))
    with pytest.raises(fs.PartitionError, match="pass partition="):
        p.run("daily_sales")


def test_static_partitions(make_pipeline: PipelineFactory) -> None:
    regions = fs.StaticPartitions(["us", "eu"])

    @fs.asset(partitions=regions)
    def region_orders(context: fs.Context) -> str:
        return f"orders-{context.partition}"

    p = make_pipeline([region_orders])
    assert p.run("region_orders", "eu").value == "orders-eu"
    assert p.get("region_orders", "eu") == "orders-eu"
    assert not p.exists("region_orders", "us")
    with pytest.raises(fs.PartitionError):
        p.run("region_orders", "apac")


def test_multi_partitions_keep_tuple_of_typed_parts(make_pipeline: PipelineFactory) -> None:
    parts = fs.MultiPartitions({"day": DAYS, "region": fs.StaticPartitions(["us", "eu"])})
    seen: list[Any] = []

    @fs.asset(partitions=parts)
    def regional_sales(context: fs.Context) -> str:
        seen.append(context.partition)
        day, region = context.partition
        return f"{region}:{day.isoformat()}"

    @fs.asset(partitions=parts)
    def regional_report(regional_sales: str) -> str:
        return regional_sales.upper()

    p = make_pipeline([regional_sales, regional_report])
    key = (date(2024, 1, 2), "eu")
    assert p.run("regional_report", key).value == "EU:2024-01-02"
    assert seen == [key] and type(seen[0][0]) is date
    assert p.exists("regional_sales", key) and not p.exists(
        "regional_sales", (date(2024, 1, 2), "us")
    )


@pytest.mark.parametrize("key", ["北京|上海", "a:b|c", "(x,y)", "customer 42", 7, ("acme", 3)])
def test_dynamic_keys_round_trip(make_pipeline: PipelineFactory, key: Any) -> None:
    seen: list[Any] = []

    @fs.asset
    def customer_report(context: fs.Context) -> str:
        seen.append(context.partition)
        return f"report for {context.partition!r}"

    p = make_pipeline([customer_report])
    result = p.run("customer_report", key)
    assert result.value == f"report for {key!r}"
    assert seen == [key] and type(seen[0]) is type(key)
    assert p.get("customer_report", key) == f"report for {key!r}"
    assert result.partition == key


def test_dynamic_keys_do_not_collide(make_pipeline: PipelineFactory, counter: Counter) -> None:
    @fs.asset
    def customer(context: fs.Context) -> Any:
        counter.hit(context.partition)
        return context.partition

    p = make_pipeline([customer])
    keys: list[Any] = ["a|b", ("a", "b"), "a", 1, "1", ("a|b",)]
    for k in keys:
        p.run("customer", k)
    for k in keys:
        assert p.get("customer", k) == k
    assert len(counter.calls) == len(keys)
