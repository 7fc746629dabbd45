"""Backfills: run a target for many partitions with bounded parallelism and timeouts.

Seed defect fixed here: the Elixir backfill ran with unbounded parallelism and an
infinite timeout. Here ``parallel`` is capped, every partition has a timeout (30 minutes
unless told otherwise), results stream to a progress callback, and only keys and errors
(never values) are kept in memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flowstone.errors import UsageError
from flowstone.outcomes import to_seconds
from flowstone.partitions import PartitionKey, PartitionSet, encode_partition

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["BackfillProgress", "BackfillResult", "max_backfill_parallelism", "run_backfill"]

log = logging.getLogger("flowstone.backfill")
DEFAULT_PARTITION_TIMEOUT = 30 * 60.0


def max_backfill_parallelism() -> int:
    """The cap on ``parallel``: twice the CPU count, at least 4."""
    return max(4, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """Reported after each partition: what finished and how far along the backfill is."""

    partition: PartitionKey
    status: str  # succeeded | failed | skipped
    run_id: str | None
    done: int
    total: int
    error: str | None = None


@dataclass(slots=True)
class BackfillResult:
    """Keys per outcome (in completion order), run ids and errors by encoded key."""

    succeeded: list[PartitionKey] = field(default_factory=list)
    failed: list[PartitionKey] = field(default_factory=list)
    skipped: list[PartitionKey] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    parallel: int = 1
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (
            f"backfill: {len(self.succeeded)} succeeded, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped in {self.seconds:.1f}s (parallel={self.parallel})"
        )


def _keys(
    pipeline: Pipeline,
    target: str,
    partitions: PartitionSet | Iterable[PartitionKey] | None,
    start: PartitionKey | None,
    end: PartitionKey | None,
) -> list[PartitionKey]:
    a = pipeline.dag[target]
    if partitions is None:
        partitions = a.partitions
        if partitions is None:
            raise UsageError(
                f"asset {target!r} declares no partitions; pass partitions=[...] to backfill"
            )
    if isinstance(partitions, PartitionSet):
        if start is not None or end is not None:
            all_keys = partitions.keys()
            lo = start if start is not None else all_keys[0]
            hi = end if end is not None else all_keys[-1]
            return list(partitions.keys_between(lo, hi))
        return list(partitions.keys())
    if isinstance(partitions, str | bytes):
        raise UsageError("partitions= must be a partition set or a list of keys, not a string")
    keys = list(partitions)
    if start is not None or end is not None:
        raise UsageError("start=/end= work with a partition set; with a list, slice the list")
    return keys


def run_backfill(
    pipeline: Pipeline,
    target: str,
    partitions: PartitionSet | Iterable[PartitionKey] | None = None,
    *,
    start: PartitionKey | None = None,
    end: PartitionKey | None = None,
    parallel: int = 4,
    timeout: float | timedelta | None = DEFAULT_PARTITION_TIMEOUT,
    skip_existing: bool = True,
    force: bool = False,
    progress: Callable[[BackfillProgress], Any] | None = None,
) -> BackfillResult:
    """Run ``target`` once per partition. See :meth:`Pipeline.backfill`."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise UsageError(f"parallel={parallel!r} must be an int >= 1")
    seconds = to_seconds(timeout, what="backfill timeout")
    keys = _keys(pipeline, target, partitions, start, end)
    seen: set[str] = set()
    unique: list[PartitionKey] = []
    for k in keys:
        enc = encode_partition(
            pipeline.dag[target].partitions.validate(k)
            if pipeline.dag[target].partitions is not None
            else k
        )
        if enc not in seen:
            seen.add(enc)
            unique.append(k)
    cap = max_backfill_parallelism()
    if parallel > cap:
        log.warning("backfill parallel=%d capped to %d (2 x CPUs)", parallel, cap)
    workers = min(parallel, cap, max(1, len(unique)))
    result = BackfillResult(parallel=workers)
    started = time.monotonic()

    def one(key: PartitionKey) -> tuple[str, str | None, str | None]:
        if skip_existing and not force and pipeline.exists(target, key):
            return "skipped", None, None
        run = pipeline.run(target, key, force=force, timeout=seconds)
        if run.status == "succeeded":
            return "succeeded", run.run_id, None
        if run.status == "running":  # a queue-based executor did not finish in time
            pipeline.cancel(run.run_id)
            return "failed", run.run_id, f"timed out after {seconds:g}s"
        return "failed", run.run_id, run.error or run.status

    todo: Sequence[PartitionKey] = unique
    with ThreadPoolExecutor(workers, thread_name_prefix="flowstone-backfill") as pool:
        inflight: dict[Future[tuple[str, str | None, str | None]], PartitionKey] = {}
        position = 0
        while position < len(todo) or inflight:
            while position < len(todo) and len(inflight) < workers:
                inflight[pool.submit(one, todo[position])] = todo[position]
                position += 1
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                key = inflight.pop(fut)
                enc = encode_partition(key)
                try:
                    status, run_id, error = fut.result()
                except Exception as exc:  # a bad partition must not stop the others
                    status, run_id, error = "failed", None, f"{type(exc).__name__}: {exc}"
                getattr(result, status).append(key)
                if run_id:
                    result.run_ids[enc] = run_id
                if error:
                    result.errors[enc] = error
                if progress is not None:
                    done_count = len(result.succeeded) + len(result.failed) + len(result.skipped)
                    progress(BackfillProgress(key, status, run_id, done_count, len(todo), error))
    result.seconds = time.monotonic() - started
    return result
