"""A partitioned daily ETL: raw orders -> cleaned -> daily revenue -> trailing revenue.

Every asset is partitioned by day. ``raw_orders`` fakes an extract from an order system
(deterministic per day, so reruns give the same numbers); ``cleaned`` drops test and
cancelled orders; ``daily_revenue`` aggregates one day; ``previous_revenue`` reads the
day before through ``TimeWindowOffset(-1)`` (skipped on the first day of the set, which has
no day before it); ``trailing_revenue`` reports the change and the two-day total.

Run a week::

    python examples/daily_etl.py
    flowstone backfill examples/daily_etl.py:pipeline trailing_revenue \\
        --start 2024-03-01 --end 2024-03-07
    flowstone get examples/daily_etl.py:pipeline trailing_revenue --partition 2024-03-05
"""

import random
from datetime import date
from typing import Any

import flowstone as fs

DAYS = fs.DailyPartitions(start="2024-03-01", end="2024-03-31")
CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli", "test-account")

Order = dict[str, Any]


def fake_orders(day: date) -> list[Order]:
    """Between 20 and 40 orders for ``day``; the same day always gives the same orders."""
    rng = random.Random(day.toordinal())
    orders = []
    for i in range(rng.randint(20, 40)):
        orders.append({
            "id": f"{day:%Y%m%d}-{i:03d}",
            "customer": rng.choice(CUSTOMERS),
            "amount": str(round(rng.uniform(5, 500), 2)),  # exported as text, like most CSVs
            "status": rng.choices(["paid", "cancelled"], weights=[9, 1])[0],
        })
    return orders


@fs.asset(partitions=DAYS)
def raw_orders(context: fs.Context) -> list[Order]:
    """The day's orders as the source system exports them."""
    orders = fake_orders(context.partition)
    context.log.info("extracted %d orders for %s", len(orders), context.partition)
    return orders


@fs.asset(partitions=DAYS)
def cleaned(raw_orders: list[Order]) -> list[Order]:
    """Paid orders of real customers, with numeric amounts."""
    return [
        {**o, "amount": float(o["amount"])}
        for o in raw_orders
        if o["status"] == "paid" and o["customer"] != "test-account"
    ]


@fs.asset(partitions=DAYS)
def daily_revenue(context: fs.Context, cleaned: list[Order]) -> dict[str, Any]:
    """Revenue and order count for one day."""
    return {
        "day": context.partition.isoformat(),
        "orders": len(cleaned),
        "revenue": round(sum(o["amount"] for o in cleaned), 2),
    }


@fs.asset(
    partitions=DAYS,
    partition_mappings={"daily_revenue": fs.TimeWindowOffset(-1)},
    optional_deps=["daily_revenue"],
)
def previous_revenue(
    context: fs.Context, daily_revenue: dict[str, Any] | None = None
) -> dict[str, Any] | fs.Skip:
    """The day before's ``daily_revenue``, seen from this day's partition.

    The first day of the set has no day before it: the mapping selects nothing, the
    optional dependency keeps its default, and the asset is skipped.
    """
    if daily_revenue is None:
        return fs.Skip(f"no day before {context.partition} in {DAYS.start}..{DAYS.end}")
    return daily_revenue


@fs.asset(partitions=DAYS, optional_deps=["previous_revenue"])
def trailing_revenue(
    daily_revenue: dict[str, Any], previous_revenue: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The day's revenue, the change against the day before and the two-day total."""
    if previous_revenue is None:
        return {**daily_revenue, "change": None, "trailing_2d": daily_revenue["revenue"]}
    return {
        **daily_revenue,
        "change": round(daily_revenue["revenue"] - previous_revenue["revenue"], 2),
        "trailing_2d": round(daily_revenue["revenue"] + previous_revenue["revenue"], 2),
    }


pipeline = fs.Pipeline(
    "daily_etl", [raw_orders, cleaned, daily_revenue, previous_revenue, trailing_revenue]
)

if __name__ == "__main__":
    result = pipeline.backfill(
        "trailing_revenue", start=date(2024, 3, 1), end=date(2024, 3, 7), parallel=2
    )
    print(result.summary())
    for day in DAYS.keys_between(date(2024, 3, 1), date(2024, 3, 7)):
        row = pipeline.get("trailing_revenue", day)
        change = "n/a" if row["change"] is None else f"{row['change']:+.2f}"
        print(f"{row['day']}  orders={row['orders']:3d}  revenue={row['revenue']:9.2f}  "
              f"change={change:>8}  trailing_2d={row['trailing_2d']:9.2f}")
