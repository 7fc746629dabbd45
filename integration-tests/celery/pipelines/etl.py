"""A partitioned daily ETL: extract -> clean -> daily revenue, one partition per day."""

import random
from typing import Any

import flowstone as fs

DAYS = fs.DailyPartitions(start="2024-01-01", end="2024-03-31")


@fs.asset(partitions=DAYS)
def raw_orders(context: fs.Context) -> list[dict[str, Any]]:
    rng = random.Random(context.partition.toordinal())
    return [{"amount": str(rng.randint(1, 100)), "status": rng.choice(["paid", "void"])}
            for _ in range(20)]


@fs.asset(partitions=DAYS)
def cleaned(raw_orders: list[dict[str, Any]]) -> list[int]:
    return [int(o["amount"]) for o in raw_orders if o["status"] == "paid"]


@fs.asset(partitions=DAYS)
def daily_revenue(context: fs.Context, cleaned: list[int]) -> dict[str, Any]:
    return {"day": str(context.partition), "revenue": sum(cleaned), "orders": len(cleaned)}


def expected_revenue(day: Any) -> int:
    """What daily_revenue must be for ``day`` (tests compare with it)."""
    rng = random.Random(day.toordinal())
    rows = [(rng.randint(1, 100), rng.choice(["paid", "void"])) for _ in range(20)]
    return sum(a for a, s in rows if s == "paid")


pipeline = fs.Pipeline("it_etl", [raw_orders, cleaned, daily_revenue])
