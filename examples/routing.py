"""Route each order by size: small orders ship at once, large ones get a credit check.

``size`` is a router: it returns the name of the branch to run. The branch it did not
choose is recorded ``skipped``; ``fulfilment`` lists both branches as optional
dependencies, so it runs after whichever branch ran. The decision is stored once per
(run, router, partition) and replayed if the run resumes, never re-evaluated.

Partitions here are order ids (the asset declares no partition set, so any key works)::

    python examples/routing.py
    flowstone run examples/routing.py:pipeline fulfilment --partition A-1002
"""

from typing import Any

import flowstone as fs

Order = dict[str, Any]

# Stands in for the order service; one order per partition key.
ORDERS: dict[str, Order] = {
    "A-1001": {"id": "A-1001", "customer": "acme", "items": [("widget", 3, 12.5)]},
    "A-1002": {"id": "A-1002", "customer": "globex", "items": [("turbine", 2, 4200.0)]},
    "A-1003": {"id": "A-1003", "customer": "initech",
               "items": [("stapler", 4, 9.99), ("paper", 10, 4.5)]},
}
LARGE_ORDER = 100.0


@fs.asset
def order(context: fs.Context) -> Order:
    """The order with its total, fetched for the run's partition (the order id)."""
    raw = ORDERS.get(str(context.partition))
    if raw is None:
        raise LookupError(f"no order {context.partition!r}; known orders: {sorted(ORDERS)}")
    total = round(sum(qty * price for _, qty, price in raw["items"]), 2)
    return {**raw, "total": total}


@fs.router(branches=["small", "large"])
def size(order: Order) -> str:
    """Small orders skip the credit check."""
    return "small" if order["total"] < LARGE_ORDER else "large"


@fs.asset(routed_from="size")
def small(order: Order) -> dict[str, Any]:
    return {"order": order["id"], "route": "small", "shipping": "standard", "checks": []}


@fs.asset(routed_from="size")
def large(order: Order) -> dict[str, Any]:
    # A real pipeline would call a credit service here (as a resource).
    approved = order["total"] < 50_000
    return {"order": order["id"], "route": "large", "shipping": "freight",
            "checks": ["credit " + ("ok" if approved else "refused")]}


@fs.asset(optional_deps=["small", "large"])
def fulfilment(
    order: Order, small: dict[str, Any] | None = None, large: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Whatever branch ran, merged with the order total."""
    handled = small if small is not None else large
    if handled is None:
        raise RuntimeError("neither branch ran; the router must pick one")
    return {**handled, "total": order["total"]}


pipeline = fs.Pipeline("routing", [order, size, small, large, fulfilment])

if __name__ == "__main__":
    for order_id in ORDERS:
        result = pipeline.run("fulfilment", partition=order_id)
        plan = result.value
        states = {b: pipeline.status(b, order_id) for b in ("small", "large")}
        print(f"{order_id}: total={plan['total']:>8.2f}  route={plan['route']:<5}  "
              f"shipping={plan['shipping']:<8} checks={plan['checks']}  branches={states}")
