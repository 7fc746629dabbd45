"""Scatter definitions: run an asset once per item and gather the results.

The asset function runs once per item (``context.scatter_item``) or, with
:class:`Batching`, once per batch (``context.batch``). Its value downstream is the list of
item results in item order (failed items as ``None``), or what ``gather`` returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

from flowstone.errors import UsageError
from flowstone.outcomes import to_seconds
from flowstone.retry import RetryPolicy

if TYPE_CHECKING:
    from flowstone.protocols import ItemReader

__all__ = [
    "MAX_ITEM_KEY_LENGTH",
    "Batch",
    "Batching",
    "Deferred",
    "ItemFailed",
    "Scatter",
    "ScatterCounts",
    "ScatterProgress",
    "item_key",
    "parse_rate",
]

MAX_ITEM_KEY_LENGTH: Final = 1024
"""Longest normalised item key accepted (seed: unbounded scatter keys bloated the database)."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """Returned by a ScatterCoordinator whose items continue on other workers.

    The engine records the step as waiting on an internal gate keyed by ``token`` (a
    secret only the coordinator holds), then calls ``start()`` to release the first
    window of items; no worker is held meanwhile. When the barrier completes, the
    coordinator finishes the step with :func:`flowstone.engine.resume.complete_deferred`.
    Calling ``start`` only after the wait is recorded means a fast barrier can never
    complete before there is a step to complete.
    """

    token: str
    start: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"Deferred(token='{self.token[:8]}…')"


@dataclass(frozen=True, slots=True)
class ScatterCounts:
    """How far one scatter has got: item counts (``total`` None while still being read)."""

    total: int | None
    succeeded: int
    failed: int
    running: int
    pending: int

    @property
    def done(self) -> int:
        """Items that finished, either way."""
        return self.succeeded + self.failed

    def text(self) -> str:
        """``1,234/10,000 items (3 failed)``: the counts at a glance."""
        total = f"{self.total:,}" if self.total is not None else "?"
        failed = f" ({self.failed:,} failed)" if self.failed else ""
        return f"{self.done:,}/{total} items{failed}"


@runtime_checkable
class ScatterProgress(Protocol):
    """Optional capability of a :class:`~flowstone.protocols.ScatterCoordinator` that
    defers its items to workers: report how far a scatter under way has got.

    ``flowstone runs`` shows a run whose only waits are deferred scatters as ``running``
    with these counts. ``partition`` is the encoded key; None means no such scatter.
    """

    def progress(
        self, pipeline: Any, run_id: str, asset: str, partition: str
    ) -> ScatterCounts | None: ...


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_rate(rate: float | int | str | None) -> float | None:
    """``"100/s"``, ``"30/m"``, ``"500/h"`` or a number (per second) -> items per second."""
    if rate is None:
        return None
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        if rate <= 0:
            raise UsageError(f"rate_limit must be positive, got {rate}")
        return float(rate)
    if isinstance(rate, str):
        m = _RATE.match(rate)
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) / _PER[m.group(2)]
    raise UsageError(
        f"rate_limit {rate!r} is not valid: use e.g. 100 (per second), '100/s', '30/m'"
    )


@dataclass(frozen=True, slots=True)
class Batching:
    """Group scatter items into batches; the asset runs once per batch.

    Args:
        max_items: at most this many items per batch.
        max_bytes: at most this many bytes of JSON-encoded items per batch.
        batch_input: function of the asset's deps computed once and shared by every batch
            (``context.batch.input``).
        on_item_error: ``"fail_batch"`` (an exception fails every item of the batch) or
            ``"collect"`` (the function returns one entry per item; an :class:`ItemFailed`
            or exception instance marks that item failed).
    """

    max_items: int | None = None
    max_bytes: int | None = None
    batch_input: Callable[..., Any] | None = None
    on_item_error: Literal["fail_batch", "collect"] = "fail_batch"

    def __post_init__(self) -> None:
        if self.max_items is None and self.max_bytes is None:
            raise UsageError(
                "Batching needs max_items and/or max_bytes, e.g. Batching(max_items=100)"
            )
        for name in ("max_items", "max_bytes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UsageError(f"Batching({name}={v!r}) must be a positive int")
        if self.on_item_error not in ("fail_batch", "collect"):
            raise UsageError(
                f"Batching(on_item_error={self.on_item_error!r}) must be 'fail_batch' or 'collect'"
            )


@dataclass(frozen=True, slots=True)
class Batch:
    """What ``context.batch`` holds while a batched scatter asset runs."""

    items: Sequence[Any]
    index: int
    count: int | None
    input: Any = None
    keys: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class ItemFailed:
    """Mark one item of a batch failed (with ``Batching(on_item_error="collect")``)."""

    error: str


@dataclass(frozen=True, slots=True)
class Scatter:
    """Fan an asset out over items.

    Args:
        items: function of the asset's deps (matched by parameter name) returning the items.
        reader: an :class:`~flowstone.protocols.ItemReader` streaming the items instead.
        max_concurrent: most items (or batches) in flight at once.
        rate_limit: most items started per second across all workers (``"100/s"``).
        failure_threshold: fail the asset (stopping the remaining items) when more than this
            share (float in (0, 1)) of the items failed; an int >= 1 is a count. Unset (and
            no ``max_failures``): the first failed item fails the asset. Tolerated failures
            are ``None`` in the gathered list.
        max_failures: fail when more than this many items failed (combine with a share).
        batching: run the function once per :class:`Batching` batch.
        item_retry: retry policy per item (or batch).
        item_timeout: seconds (or timedelta) one item may run.
        gather: function of the ordered item results returning the asset's value.
        key: function of an item returning its key (default: its canonical JSON); items
            with equal keys run once.
        page_size: items read from a reader per page (a checkpoint follows every page).
    """

    items: Callable[..., Iterable[Any]] | None = None
    reader: ItemReader | None = None
    max_concurrent: int = 16
    rate_limit: float | str | None = None
    failure_threshold: float | int | None = None
    max_failures: int | None = None
    batching: Batching | None = None
    item_retry: RetryPolicy | None = None
    item_timeout: float | Any = None
    gather: Callable[[list[Any]], Any] | None = None
    key: Callable[[Any], str] | None = None
    page_size: int = 1000
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.items is None) == (self.reader is None):
            raise UsageError(
                "Scatter needs exactly one of items=<function of deps> or reader=<ItemReader>"
            )
        if self.items is not None and not callable(self.items):
            raise UsageError("Scatter(items=...) must be a function of the asset's deps")
        if (
            isinstance(self.max_concurrent, bool)
            or not isinstance(self.max_concurrent, int)
            or (self.max_concurrent < 1)
        ):
            raise UsageError(f"Scatter(max_concurrent={self.max_concurrent!r}) must be an int >= 1")
        if (
            isinstance(self.page_size, bool)
            or not isinstance(self.page_size, int)
            or (self.page_size < 1)
        ):
            raise UsageError(f"Scatter(page_size={self.page_size!r}) must be an int >= 1")
        parse_rate(self.rate_limit)
        ft = self.failure_threshold
        if ft is not None:
            if isinstance(ft, bool) or not isinstance(ft, int | float):
                raise UsageError(
                    "Scatter(failure_threshold=...) must be a float share or int count"
                )
            if isinstance(ft, float) and not 0 <= ft < 1:
                raise UsageError(
                    f"Scatter(failure_threshold={ft}) as a share must be in [0, 1); "
                    "use an int for a count"
                )
            if isinstance(ft, int) and ft < 0:
                raise UsageError(f"Scatter(failure_threshold={ft}) must not be negative")
        if self.max_failures is not None and (
            isinstance(self.max_failures, bool)
            or not isinstance(self.max_failures, int)
            or self.max_failures < 0
        ):
            raise UsageError(f"Scatter(max_failures={self.max_failures!r}) must be an int >= 0")
        to_seconds(self.item_timeout, what="Scatter item_timeout")

    @property
    def rate_per_second(self) -> float | None:
        return parse_rate(self.rate_limit)

    @property
    def item_timeout_seconds(self) -> float | None:
        return to_seconds(self.item_timeout, what="Scatter item_timeout")

    def failure_limits(self) -> tuple[float | None, int | None]:
        """(share, count): fail when failed/total > share or failed > count.

        With neither ``failure_threshold`` nor ``max_failures`` set, no failed item is
        tolerated (count 0), as Step Functions' Distributed Map does.
        """
        share: float | None = None
        count = self.max_failures
        ft = self.failure_threshold
        if isinstance(ft, float):
            share = ft
        elif isinstance(ft, int):
            count = ft if count is None else min(count, ft)
        if share is None and count is None:
            count = 0
        return share, count

    def exceeded(self, failed: int, total: int | None) -> bool:
        """Whether ``failed`` failures out of ``total`` known items break the threshold."""
        share, count = self.failure_limits()
        if count is not None and failed > count:
            return True
        return share is not None and total is not None and total > 0 and failed / total > share


def item_key(scatter: Scatter, item: Any, index: int, asset: str) -> str:
    """The normalised, size-limited key of one item (seed: scatter keys were unbounded)."""
    if scatter.key is not None:
        key = scatter.key(item)
        if not isinstance(key, str):
            raise UsageError(f"Scatter(key=...) of asset {asset!r} must return a str, got {key!r}")
    else:
        try:
            key = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"scatter item {index} of asset {asset!r} is not JSON-serialisable ({exc}); "
                "pass Scatter(key=lambda item: ...) returning a unique string per item"
            ) from exc
    if len(key) > MAX_ITEM_KEY_LENGTH:
        raise UsageError(
            f"scatter item {index} of asset {asset!r} has a key of {len(key)} characters; the "
            f"limit is {MAX_ITEM_KEY_LENGTH}. Pass Scatter(key=lambda item: item['id']) "
            "or scatter over ids and load the payload in the asset"
        )
    return key
