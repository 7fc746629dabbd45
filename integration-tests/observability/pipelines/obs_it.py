"""The pipeline the observability integration tests run on real Celery workers: a
three-asset DAG, a scatter over five items and an asset that always fails. Store, broker
and executor come from the FLOWSTONE_* environment."""

from __future__ import annotations

import flowstone as fs


@fs.asset
def raw() -> list[int]:
    return [1, 2, 3, 4, 5]


@fs.asset
def cleaned(context: fs.Context, raw: list[int]) -> list[int]:
    context.log.info("cleaning %d rows", len(raw))
    return [n for n in raw if n > 1]


@fs.asset
def report(cleaned: list[int]) -> int:
    return sum(cleaned)


@fs.asset(scatter=fs.Scatter(items=lambda raw: list(raw)))
def squares(context: fs.Context, raw: list[int]) -> int:
    item: int = context.scatter_item
    return item * item


@fs.asset
def explode(raw: list[int]) -> int:
    raise RuntimeError("explodes on purpose")


pipeline = fs.Pipeline("obs_it", [raw, cleaned, report, squares, explode])
