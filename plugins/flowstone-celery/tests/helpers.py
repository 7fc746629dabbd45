"""Test helpers: a tiny in-memory pipeline, a reader for published step messages and a
memory store that records finishes in batches."""

from __future__ import annotations

from typing import Any

import flowstone as fs
from flowstone.defaults.memory_store import MemoryRunStore
from flowstone.errors import StorageError
from flowstone_celery import FlowstoneCelery


def drain(app: FlowstoneCelery) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """Every message waiting in the app's queue: (step message, headers, content type)."""
    out = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.flowstone_settings.queue)
        try:
            while True:
                try:
                    msg = queue.get(block=False)
                except queue.Empty:
                    break
                args, _kwargs, _embed = msg.decode()
                out.append((args[0], dict(msg.headers), msg.content_type))
                msg.ack()
        finally:
            queue.close()
    return out


def quickstart(name: str = "quickstart", like: fs.Pipeline | None = None) -> fs.Pipeline:
    """numbers -> (doubled, tripled) -> total, in memory; ``like``: share its store and
    values (a second worker of the same deployment)."""
    @fs.asset
    def numbers() -> list[int]:
        return [1, 2, 3]

    @fs.asset
    def doubled(numbers: list[int]) -> list[int]:
        return [n * 2 for n in numbers]

    @fs.asset
    def tripled(numbers: list[int]) -> list[int]:
        return [n * 3 for n in numbers]

    @fs.asset
    def total(doubled: list[int], tripled: list[int]) -> int:
        return sum(doubled) + sum(tripled)

    if like is not None:
        return fs.Pipeline(name, [numbers, doubled, tripled, total], store=like.store,
                           io_managers={"default": like.io_manager("default")},
                           executor="inprocess")
    return fs.Pipeline(name, [numbers, doubled, tripled, total], store="memory://",
                       executor="inprocess")


class BatchingMemoryStore(MemoryRunStore):
    """A memory store with ``finish_steps`` (each finish as ``finish_step`` does it), whose
    claims of ``fail_claims_of`` fail like a lost connection."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_claims_of: set[str] = set()
        self.batches: list[list[str]] = []

    def claim_step(self, run_id: str, asset: str, partition: str, **kw: Any) -> Any:
        if asset in self.fail_claims_of:
            raise StorageError("connection to the store lost (simulated)")
        return super().claim_step(run_id, asset, partition, **kw)

    def finish_steps(self, finishes: Any, *, sources: Any) -> list[Any]:
        self.batches.append([f.asset for f in finishes])
        return [
            (self.finish_step(f.run_id, f.asset, f.partition, f.outcome, then=f.then,
                              fence=f.fence), None)
            for f in finishes
        ]  # fmt: skip
