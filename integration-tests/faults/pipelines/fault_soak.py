"""The soak's pipeline: a three-asset chain per partition, and a scatter whose size is its
partition key (``big-<N>``)."""

from __future__ import annotations

from typing import Any

import flowstone as fs


@fs.asset
def raw(context: fs.Context) -> dict[str, Any]:
    return {"partition": str(context.partition), "rows": list(range(50))}


@fs.asset
def cleaned(raw: dict[str, Any]) -> list[int]:
    return [r * 2 for r in raw["rows"]]


@fs.asset
def report(cleaned: list[int]) -> int:
    return sum(cleaned)


@fs.asset
def item_count(context: fs.Context) -> list[int]:
    return list(range(int(str(context.partition).rsplit("-", 1)[1])))


@fs.asset(scatter=fs.Scatter(items=lambda item_count: item_count, max_concurrent=400))
def big(context: fs.Context, item_count: list[int]) -> int:
    i: int = context.scatter_item
    return i % 7


def make_pipeline() -> fs.Pipeline:
    """A new pipeline object, configured from the environment as it is now."""
    return fs.Pipeline("faults_soak", [raw, cleaned, report, item_count, big])


_built: list[fs.Pipeline] = []


def __getattr__(name: str) -> Any:
    """``pipeline``, built on first use: workers load it by its spec, while tests build
    their own with :func:`make_pipeline` (so importing this module opens nothing)."""
    if name == "pipeline":
        if not _built:
            _built.append(make_pipeline())
        return _built[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
