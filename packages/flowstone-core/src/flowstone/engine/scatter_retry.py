"""Re-running only the failed items of a finished scatter, in a new run.

``pipeline.retry_failed_items(run_id, asset)`` starts a new run of ``asset`` tagged
``{RETRY_TAG: run_id}``. The runner reads that tag into
:attr:`~flowstone.engine.requests.ScatterRequest.previous_run_id` and the scatter
coordinator reuses the earlier run's succeeded item results, running only the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowstone.engine.plan import validate_key
from flowstone.errors import RunNotFoundError, UsageError
from flowstone.partitions import PartitionKey, encode_partition

if TYPE_CHECKING:
    from flowstone.runtime import Runtime

__all__ = ["RETRY_TAG", "check_retry"]

RETRY_TAG = "retry_failed_items_of"


def check_retry(runtime: Runtime, run_id: str, asset: str, partition: PartitionKey | None) -> str:
    """Validate a retry of ``asset``'s failed items from ``run_id``; return the asset name.

    Raises:
        RunNotFoundError: no such run in this pipeline's store.
        UsageError: the asset is not a scatter asset, the run is still going, the run did
            not execute that scatter step itself, or ``partition`` is not the run's.
    """
    run = runtime.store.get_run(run_id)
    if run is None or run.pipeline != runtime.name:
        raise RunNotFoundError(
            f"no run {run_id!r} in the store of pipeline {runtime.name!r}; list runs with "
            "pipeline.runs() or `flowstone runs`"
        )
    a = runtime.graph[asset]
    if a.scatter is None:
        raise UsageError(
            f"asset {a.name!r} is not a scatter asset, so it has no items to retry; "
            "use pipeline.run(asset, force=True) to run it again"
        )
    if run.status in ("running", "waiting"):
        raise UsageError(
            f"run {run_id!r} is still {run.status}; wait for it to finish before retrying "
            "its failed scatter items"
        )
    enc = encode_partition(validate_key(a, partition) if partition is not None else None)
    step = runtime.store.get_step(run_id, a.name, enc)
    if step is None:
        others = sorted(s.partition for s in runtime.store.list_steps(run_id) if s.asset == a.name)
        if others:
            raise UsageError(
                f"run {run_id!r} ran scatter asset {a.name!r} for partition "
                f"{', '.join(repr(o) for o in others)}, not {enc or 'none'!r}; pass that "
                "partition (--partition on the CLI)"
            )
        raise UsageError(
            f"run {run_id!r} has no scatter results for asset {a.name!r}: it did not plan "
            "that asset. Pass the id of the run that scattered it"
        )
    if step.state not in ("succeeded", "failed"):
        raise UsageError(
            f"scatter step {a.name!r} [{enc or 'none'}] of run {run_id!r} is {step.state}, "
            "not finished; nothing to retry (pipeline.resume() continues an unfinished run)"
        )
    if step.materialization_id is not None:
        mat = runtime.store.get_materialization(step.materialization_id)
        if mat is not None and mat.run_id != run_id:
            raise UsageError(
                f"run {run_id!r} has no scatter results for asset {a.name!r}: it reused the "
                f"value of run {mat.run_id!r}; retry the failed items of that run instead"
            )
    return a.name
