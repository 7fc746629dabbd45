"""Live progress of a scatter, and re-running only its failed items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowstone.errors import UsageError
from flowstone.partitions import PartitionKey, encode_partition
from flowstone.runs import RunResult
from flowstone.scatter import ScatterCounts
from flowstone_scatter import barrier
from flowstone_scatter.db import Database

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["ScatterStatus", "read_counts", "retry_failed", "scatter_status"]


@dataclass(frozen=True, slots=True)
class ScatterStatus:
    """Counts of one scatter's items (``running`` = queued or executing).

    ``partition`` is the encoded partition key, or None when the asset is unpartitioned
    (``null`` in :meth:`to_dict`, as ``flowstone scatter status --json`` prints it).
    """

    run_id: str
    asset: str
    partition: str | None
    state: str
    total: int | None
    pending: int
    running: int
    succeeded: int
    failed: int
    reader_done: bool
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def scatter_status(pipeline: Pipeline, run_id: str, asset: str,
                   partition: PartitionKey | None = None) -> ScatterStatus:
    """Item counts of the scatter of ``asset`` in ``run_id`` (read from Postgres).

    Raises:
        UsageError: the pipeline does not use the Celery scatter coordinator, or that
            run/asset has no scatter barrier.
    """
    from flowstone_scatter.items import coordinator_of

    enc = encode_partition(partition)
    db = coordinator_of(pipeline.runner).database(pipeline.runner)
    b, counts = read_counts(db, run_id, pipeline.dag[asset].name, enc)
    if b is None:
        raise UsageError(f"run {run_id} has no scatter of asset {asset!r} [{enc}] (check the "
                         "run id, asset and --partition)")
    return ScatterStatus(run_id, asset, enc or None, b["state"], counts.total, counts.pending,
                         counts.running, counts.succeeded, counts.failed,
                         bool(b["reader_done"]), b["error"])


def read_counts(db: Database, run_id: str, asset: str,
                partition: str) -> tuple[Any, ScatterCounts]:
    """The barrier row of a scatter (None if it has none) and its item counts
    (``partition`` encoded); one transaction-free read of two statements."""

    async def read(conn: Any) -> tuple[Any, dict[str, int]]:
        b = await barrier.find(conn, db.t, run_id, asset, partition)
        if b is None:
            return None, {}
        rows = await conn.fetch(f"SELECT state, count(*) AS n FROM {db.t.items} WHERE "
                                "barrier_id = $1 GROUP BY state", b["id"])
        return b, {r["state"]: int(r["n"]) for r in rows}

    b, by_state = db.run(read)
    total = None
    if b is not None:
        total = b["total_items"] if b["reader_done"] else b["expected_total"]
    return b, ScatterCounts(
        total=None if total is None else int(total), succeeded=by_state.get("succeeded", 0),
        failed=by_state.get("failed", 0), running=by_state.get("queued", 0),
        pending=by_state.get("pending", 0))


def retry_failed(pipeline: Pipeline, run_id: str, asset: str | None = None,
                 partition: PartitionKey | None = None) -> RunResult:
    """Re-run only the failed items of a run's scatter.

    A run that failed or was cancelled (threshold exceeded) is re-opened in place: each
    scatter step re-opens its barrier keeping every item that succeeded, and what depends
    on them runs too. A run that succeeded with tolerated failures is left as it is: a new
    run of the scatter ``asset`` (:meth:`~flowstone.pipeline.Pipeline.retry_failed_items`)
    reuses its succeeded items and runs the rest. ``asset`` may be omitted when the run
    scattered exactly one asset.

    Raises:
        UsageError: the run succeeded and ``asset`` is needed but missing or ambiguous.
    """
    run = pipeline.store.get_run(run_id)
    if run is None or run.status != "succeeded":
        return pipeline.resume(run_id)
    if asset is None:
        scattered = sorted({s.asset for s in pipeline.store.list_steps(run_id)
                            if s.state == "succeeded" and pipeline.dag[s.asset].scatter})
        if len(scattered) != 1:
            raise UsageError(
                f"run {run_id} succeeded and scattered "
                f"{', '.join(scattered) if scattered else 'no asset'}; pass --asset NAME "
                "(and --partition) to say which scatter's failed items to re-run")
        asset = scattered[0]
    return pipeline.retry_failed_items(run_id, asset, partition)
