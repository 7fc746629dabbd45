"""One scatter unit (an item, or a batch of items) run with its retries, and the message of a
scatter that failed: shared by the in-process and the Celery scatter coordinators.

A unit is the asset function called once: with ``context.scatter_item`` set (no
:class:`~flowstone.scatter.Batching`), or with ``context.batch`` holding several items. Its
outcome is one :class:`ItemOutcome` per item: a batch's function returns one entry per item
(an :class:`~flowstone.scatter.ItemFailed` or an exception instance marks that item failed),
and a unit that raised fails every item in it, after ``Scatter.item_retry``'s attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowstone.engine.invoke import bind_arguments, call_with_timeout
from flowstone.errors import UsageError
from flowstone.scatter import ItemFailed

if TYPE_CHECKING:
    from flowstone.asset import AssetDef
    from flowstone.context import Context
    from flowstone.scatter import Scatter

__all__ = ["FIRST_ERRORS", "ItemOutcome", "item_error", "run_unit", "threshold_message"]

FIRST_ERRORS = 3
"""How many item errors a failed scatter's message shows."""

_MAX_ERROR = 2000
_MAX_KEY_SHOWN = 80
_MAX_ERROR_SHOWN = 300


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """One item's result: ``value`` when ``error`` is None, else the failure."""

    value: Any = None
    error: str | None = None


def item_error(exc: BaseException) -> str:
    """An item's error as recorded: ``"TypeName: message"`` (at most 2,000 characters)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def run_unit(
    asset: AssetDef,
    deps: Mapping[str, Any],
    size: int,
    context_for: Callable[[int], Context],
) -> list[ItemOutcome]:
    """Call ``asset``'s function for one unit of ``size`` items; one outcome per item.

    ``context_for(attempt)`` builds the context of that attempt (1, 2, ...), with
    ``scatter_item`` or ``batch`` set. A failed call is retried as ``Scatter.item_retry``
    says; an ``item_timeout`` bounds each call.
    """
    sc = asset.scatter
    assert sc is not None
    attempt = 1
    while True:
        try:
            context = context_for(attempt)
            value = call_with_timeout(
                asset.fn,
                bind_arguments(asset, deps, context),
                timeout=sc.item_timeout_seconds,
                what=f"scatter item of {asset.name!r}",
            )
            if sc.batching is None:
                return [ItemOutcome(value)]
            return _split_batch(asset.name, size, value)
        except Exception as exc:
            policy = sc.item_retry
            if policy is not None and policy.should_retry(attempt, exc):
                time.sleep(policy.delay(attempt))
                attempt += 1
                continue
            error = item_error(exc)
            return [ItemOutcome(error=error) for _ in range(size)]


def _split_batch(asset: str, size: int, value: Any) -> list[ItemOutcome]:
    if not isinstance(value, list | tuple) or len(value) != size:
        raise UsageError(
            f"batched scatter asset {asset!r} must return a list with one result per item "
            f"({size}), got {type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, list | tuple) else "")
        )
    out: list[ItemOutcome] = []
    for v in value:
        if isinstance(v, ItemFailed):
            out.append(ItemOutcome(error=v.error))
        elif isinstance(v, BaseException):
            out.append(ItemOutcome(error=f"{type(v).__name__}: {v}"))
        else:
            out.append(ItemOutcome(v))
    return out


def threshold_message(
    sc: Scatter,
    asset: str,
    run_id: str,
    failed: int,
    total: int,
    first: Sequence[tuple[int, str, str]],
    *,
    also: str = "",
) -> str:
    """Why a scatter failed: the counts, the threshold, and its first item errors.

    ``first`` holds ``(index, key, error)`` of the first failed items (by index); ``also``
    names another way to retry them (e.g. a CLI command).
    """
    share, count = sc.failure_limits()
    limit = " and ".join(
        x
        for x in (
            f"{share:.1%}" if share is not None else "",
            f"{count} items" if count is not None and count > 0 else "",
        )
        if x
    )
    if not limit:
        limit = "0 failures"
        if sc.failure_threshold is None and sc.max_failures is None:
            limit += " (the default: set Scatter(failure_threshold=...) to tolerate some)"
    errors = "; ".join(
        f"item {index} (key {_short(key, _MAX_KEY_SHOWN)}): {_short(error, _MAX_ERROR_SHOWN)}"
        for index, key, error in first[:FIRST_ERRORS]
    )
    return (
        f"scatter asset {asset!r}: {failed} of {total} items failed, above the failure "
        f"threshold of {limit}; remaining items were not started. First errors: {errors}. "
        f"Fix the items and run pipeline.resume({run_id!r}){also} to retry only the failed "
        "ones"
    )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
