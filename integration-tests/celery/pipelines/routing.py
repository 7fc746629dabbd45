"""Route an order (the partition is the order amount) to the small or large branch."""

from typing import Any

import flowstone as fs


@fs.asset
def order(context: fs.Context) -> dict[str, Any]:
    return {"id": str(context.partition), "total": float(str(context.partition))}


@fs.router(branches=["small", "large"])
def size(order: dict[str, Any]) -> str:
    return "small" if order["total"] < 100 else "large"


@fs.asset(routed_from="size")
def small(order: dict[str, Any]) -> str:
    return "standard"


@fs.asset(routed_from="size")
def large(order: dict[str, Any]) -> str:
    return "freight"


@fs.asset(optional_deps=["small", "large"])
def fulfilment(order: dict[str, Any], small: str | None = None,
               large: str | None = None) -> dict[str, Any]:
    return {"order": order["id"], "shipping": small or large}


pipeline = fs.Pipeline("it_routing", [order, size, small, large, fulfilment])
