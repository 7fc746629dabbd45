"""Backfills started from the UI: each runs ``pipeline.backfill`` in a thread of its own and
reports its progress here, where the partition page polls it.

Only counts are kept (the backfill itself keeps keys and errors, never values); at most
:data:`MAX_RUNNING` run at once, and the newest :data:`KEEP` are remembered.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flowstone.backfill import BackfillProgress
from flowstone.errors import UsageError
from flowstone.partitions import PartitionKey, encode_partition
from flowstone_ui.models import BackfillOut

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["KEEP", "MAX_RUNNING", "BackfillJobs"]

log = logging.getLogger("flowstone.ui")
MAX_RUNNING = 4
KEEP = 100


@dataclass(frozen=True, slots=True)
class _Job:
    id: str
    pipeline: str
    asset: str
    start: str
    end: str
    total: int
    started_at: datetime
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    state: str = "running"
    error: str | None = None

    def out(self) -> BackfillOut:
        percent = 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)
        return BackfillOut(
            id=self.id, pipeline=self.pipeline, asset=self.asset, start=self.start,
            end=self.end, total=self.total, done=self.done, succeeded=self.succeeded,
            failed=self.failed, skipped=self.skipped, state=self.state,  # type: ignore[arg-type]
            error=self.error, percent=percent, started_at=self.started_at,
        )  # fmt: skip


class BackfillJobs:
    """The backfills this server started (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._threads: list[threading.Thread] = []

    def start(
        self, pipeline: Pipeline, asset: str, start: PartitionKey, end: PartitionKey,
        *, parallel: int,
    ) -> BackfillOut:
        """Start backfilling ``asset`` from ``start`` to ``end`` (inclusive, keys of its set).

        Raises:
            UsageError: the asset has no partition set, the range is empty or invalid, or
                :data:`MAX_RUNNING` backfills are already running.
        """
        parts = pipeline.dag[asset].partitions
        if parts is None:
            raise UsageError(f"asset {asset!r} has no partition set to backfill over")
        keys = parts.keys_between(start, end)
        if not keys:
            raise UsageError(f"no partitions of {asset!r} between {start!r} and {end!r}")
        with self._lock:
            if sum(j.state == "running" for j in self._jobs.values()) >= MAX_RUNNING:
                raise UsageError(
                    f"{MAX_RUNNING} backfills are running already; wait for one to finish"
                )
            job = _Job(secrets.token_hex(8), pipeline.name, asset, encode_partition(start),
                       encode_partition(end), len(keys), datetime.now(UTC))  # fmt: skip
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP:
                self._jobs.popitem(last=False)
        thread = threading.Thread(
            target=self._run, args=(job.id, pipeline, asset, keys, parallel),
            name=f"flowstone-ui-backfill-{job.id}", daemon=True,
        )  # fmt: skip
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return job.out()

    def _update(self, job_id: str, **changes: object) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._jobs[job_id] = replace(job, **changes)  # type: ignore[arg-type]

    def _run(
        self, job_id: str, pipeline: Pipeline, asset: str, keys: list[PartitionKey],
        parallel: int,
    ) -> None:
        counts = {"succeeded": 0, "failed": 0, "skipped": 0}

        def progress(p: BackfillProgress) -> None:
            if p.status in counts:
                counts[p.status] += 1
            self._update(job_id, done=p.done, **counts)

        try:
            result = pipeline.backfill(asset, keys, parallel=parallel, progress=progress)
            self._update(job_id, state="finished", done=len(keys),
                         succeeded=len(result.succeeded), failed=len(result.failed),
                         skipped=len(result.skipped))  # fmt: skip
        except Exception as exc:  # reported on the page; the server keeps going
            log.exception("backfill %s of %s failed", job_id, asset)
            self._update(job_id, state="failed", error=f"{type(exc).__name__}: {exc}")

    def get(self, job_id: str) -> BackfillOut | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return None if job is None else job.out()

    def list(self, pipeline: str, asset: str) -> list[BackfillOut]:
        """This asset's backfills, newest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.pipeline == pipeline and j.asset == asset]
        return [j.out() for j in reversed(jobs)]

    def join(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout`` seconds each) for running backfill threads to end."""
        for t in list(self._threads):
            t.join(timeout)
