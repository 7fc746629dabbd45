"""The in-process scatter coordinator.

Items (from a function of the deps, or an ItemReader page by page) run on a bounded
thread pool: at most ``max_concurrent`` items or batches are in flight, never all at
once. Every item result is saved in the run store, and a reader's checkpoint is saved
after each page once that page's results are durable, so a crashed or failed scatter
resumes (``pipeline.resume(run_id)``) without re-running the items that succeeded.
A ``pipeline.retry_failed_items`` run reuses the succeeded items of the earlier run.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from flowstone.codec import decode_value, encode_value
from flowstone.defaults.scatter_units import (
    FIRST_ERRORS,
    ItemOutcome,
    item_error,
    run_unit,
    threshold_message,
)
from flowstone.engine.requests import ScatterRequest
from flowstone.errors import EncodingError, ScatterThresholdError
from flowstone.records import ItemResult
from flowstone.scatter import Batch, Scatter, item_key

__all__ = ["InlineScatterCoordinator", "item_key"]

_MIN_SAMPLE = 100  # a share threshold over an unknown total is judged after this many items

Unit = list[tuple[int, str, Any]]


class _RateLimiter:
    """A token bucket shared by this scatter's threads."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)


class InlineScatterCoordinator:
    name = "inline"

    def execute(self, req: ScatterRequest) -> object:
        return _ScatterRun(req).run()


class _ScatterRun:
    def __init__(self, req: ScatterRequest) -> None:
        self.req = req
        scatter = req.asset.scatter
        assert scatter is not None
        self.sc: Scatter = scatter
        self.store = req.runner.runtime.store
        self.cursor = f"scatter:{req.run_id}:{req.asset.name}:{req.partition}"
        prior = self.store.load_item_results(req.run_id, req.asset.name, req.partition)
        self.done: dict[int, ItemResult] = {r.index: r for r in prior if r.state == "succeeded"}
        self.live: dict[int, Any] = {}
        self.failed: dict[int, tuple[str, str]] = {}  # index -> (key, error)
        self.prior_keys = {r.key for r in prior}
        self.prior_failed = any(r.state == "failed" for r in prior)
        # a retry_failed_items run: the earlier run's succeeded items, by key; they are
        # copied into this run as they are met, so this run is self-contained and resumable
        self.reuse: dict[str, ItemResult] = {}
        earlier = req.previous_run_id
        if earlier is not None and earlier != req.run_id:
            old = self.store.load_item_results(earlier, req.asset.name, req.partition)
            self.reuse = {r.key: r for r in old if r.state == "succeeded"}
        self.seen: set[str] = set()
        self.index_of_key: dict[str, int] = {}
        self.total: int | None = None
        self.pending: list[ItemResult] = []
        rate = self.sc.rate_per_second
        self.limiter = _RateLimiter(rate) if rate else None
        self.batch_input: Any = None
        self.batch_count = 0
        self._checked_at = float("-inf")
        self._was_cancelled = False

    # --- sources ------------------------------------------------------------------------
    def pages(self) -> Iterator[tuple[Unit, dict[str, Any] | None]]:
        sc, req = self.sc, self.req
        if sc.items is not None:
            kwargs = {k: v for k, v in req.deps.items() if k in _params(sc.items)}
            items = list(sc.items(**kwargs))
            self.total = len(items)
            unit = self._keyed(enumerate(items))
            for start in range(0, len(unit), sc.page_size):
                yield unit[start : start + sc.page_size], None
            return
        reader = copy.copy(sc.reader)
        assert reader is not None
        reader.init(dict(req.deps))
        try:
            saved = self.store.get_cursor(self.cursor)
            next_index = 0
            if saved and not self.prior_failed:
                # resume after the last durable page; with failed items to retry, re-read
                # from the start instead (succeeded items are skipped by index)
                self.seen = set(self.prior_keys)
                state = json.loads(saved)
                reader.restore(state["reader"])
                next_index = int(state["next_index"])
            self.total = reader.count()
            while True:
                page = reader.read(sc.page_size)
                if not page:
                    return
                unit = self._keyed(enumerate(page, start=next_index))
                next_index += len(page)
                yield unit, {"reader": reader.checkpoint(), "next_index": next_index}
        finally:
            reader.close()

    def _keyed(self, items: Any) -> Unit:
        out: Unit = []
        for index, item in items:
            key = item_key(self.sc, item, index, self.req.asset.name)
            if key in self.seen:
                continue  # duplicates run once
            self.seen.add(key)
            self.index_of_key[key] = index
            if index not in self.done and (hit := self.reuse.pop(key, None)) is not None:
                result = ItemResult(index, key, "succeeded", value_json=hit.value_json)
                self.done[index] = result
                self.pending.append(result)
            out.append((index, key, item))
        return out

    def _units(self, page: Unit) -> list[tuple[Unit, int | None]]:
        todo = [t for t in page if t[0] not in self.done]
        b = self.sc.batching
        if b is None:
            return [([t], None) for t in todo]
        units: list[tuple[Unit, int | None]] = []
        current: Unit = []
        size = 0
        for t in todo:
            n = len(json.dumps(t[2], default=str).encode())
            full_items = b.max_items is not None and len(current) >= b.max_items
            full_bytes = b.max_bytes is not None and current and size + n > b.max_bytes
            if full_items or full_bytes:
                units.append((current, self.batch_count))
                self.batch_count += 1
                current, size = [], 0
            current.append(t)
            size += n
        if current:
            units.append((current, self.batch_count))
            self.batch_count += 1
        return units

    # --- running --------------------------------------------------------------------------
    def run(self) -> object:
        sc, req = self.sc, self.req
        if sc.batching is not None and sc.batching.batch_input is not None:
            fn = sc.batching.batch_input
            self.batch_input = fn(**{k: v for k, v in req.deps.items() if k in _params(fn)})
        with ThreadPoolExecutor(sc.max_concurrent, thread_name_prefix="flowstone-scatter") as pool:
            for page, checkpoint in self.pages():
                inflight: dict[Future[list[ItemOutcome]], Unit] = {}
                for unit, batch_index in self._units(page):
                    while len(inflight) >= sc.max_concurrent:
                        self._collect(inflight, FIRST_COMPLETED)
                    if self._exceeded(final=False) or self._cancelled():
                        break
                    if self.limiter is not None:
                        self.limiter.acquire()
                    inflight[pool.submit(self._run_unit, unit, batch_index)] = unit
                while inflight:
                    self._collect(inflight, FIRST_COMPLETED)
                self._flush(checkpoint)
                self._progress()
                if self._exceeded(final=False):
                    self._fail()
                if self._cancelled():
                    return None
        if self._exceeded(final=True):
            self._fail()
        return self._gather()

    def _run_unit(self, unit: Unit, batch_index: int | None) -> list[ItemOutcome]:
        req = self.req
        if batch_index is None:
            item = unit[0][2]
            return run_unit(req.asset, req.deps, 1, lambda _: req.make_context(item, None))
        batch = Batch(
            items=[t[2] for t in unit],
            index=batch_index,
            count=None,
            input=self.batch_input,
            keys=[t[1] for t in unit],
        )
        return run_unit(req.asset, req.deps, len(unit), lambda _: req.make_context(None, batch))

    def _collect(self, inflight: dict[Future[list[ItemOutcome]], Unit], how: str) -> None:
        done, _ = wait(inflight, return_when=how)
        for fut in done:
            unit = inflight.pop(fut)
            for (index, key, _), outcome in zip(unit, fut.result(), strict=True):
                error = outcome.error
                if error is None:
                    try:
                        data = encode_value(outcome.value, asset=self.req.asset.name)
                    except EncodingError as exc:  # an unencodable result fails that item
                        error = item_error(exc)
                if error is None:
                    result = ItemResult(index, key, "succeeded", value_json=data.decode("utf-8"))
                    self.done[index] = result
                    self.live[index] = outcome.value
                    self.failed.pop(index, None)
                else:
                    result = ItemResult(index, key, "failed", error=error)
                    self.failed[index] = (key, error)
                self.pending.append(result)

    def _flush(self, checkpoint: dict[str, Any] | None) -> None:
        r = self.req
        if self.pending:
            self.store.save_item_results(r.run_id, r.asset.name, r.partition, self.pending)
            self.pending = []
        if checkpoint is not None:
            old = self.store.get_cursor(self.cursor)
            self.store.set_cursor(self.cursor, json.dumps(checkpoint), expected=old)

    def _progress(self) -> None:
        r = self.req
        r.runner.runtime.events.emit(
            "scatter.progress", r.run_id, r.asset.name, r.partition,
            {"succeeded": len(self.done), "failed": len(self.failed), "total": self.total},
        )  # fmt: skip

    def _cancelled(self) -> bool:
        """Whether the run was cancelled; asks the store at most every 0.25 s."""
        now = time.monotonic()
        if now - self._checked_at < 0.25:
            return self._was_cancelled
        self._checked_at = now
        run = self.store.get_run(self.req.run_id)
        self._was_cancelled = run is not None and run.status == "cancelled"
        return self._was_cancelled

    def _exceeded(self, *, final: bool) -> bool:
        failed = len(self.failed)
        if failed == 0:
            return False
        total = self.total
        if total is None:
            processed = len(self.done) + failed
            total = processed if (final or processed >= _MIN_SAMPLE) else None
        return self.sc.exceeded(failed, total)

    def _fail(self) -> None:
        r = self.req
        self._flush(None)
        failed = len(self.failed)
        total = self.total if self.total is not None else len(self.done) + failed
        first = [(i, key, error) for i, (key, error) in sorted(self.failed.items())[:FIRST_ERRORS]]
        raise ScatterThresholdError(
            threshold_message(self.sc, r.asset.name, r.run_id, failed, total, first)
        )

    def _gather(self) -> object:
        order = sorted(set(self.index_of_key.values()) | set(self.done))
        values = []
        for index in order:
            if index in self.live:
                values.append(self.live[index])
            elif index in self.done and (data := self.done[index].value_json) is not None:
                values.append(decode_value(data.encode("utf-8")))
            else:
                values.append(None)
        if self.sc.gather is not None:
            return self.sc.gather(values)
        return values


def _params(fn: Any) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)
