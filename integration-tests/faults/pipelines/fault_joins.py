"""The joins fault test's pipeline: ``parent``, a parallel asset joining three branch
assets ``j1`` ... ``j3``, each execution audited and trapped like the fault DAG's assets
(see ``fault_dag.py``). Started for many partitions at once (``run_many``), the branches
of many runs share a message and the joins they complete run one after the other on the
worker that recorded them, their finishes waiting together in one batch."""

from __future__ import annotations

import os
from typing import Any

from fault_dag import AUDIT, _asset, trap

import flowstone as fs

BRANCHES = ("j1", "j2", "j3")


def _branch(name: str, k: int) -> Any:
    def fn(context: fs.Context) -> dict[str, Any]:
        return _asset(context, k)

    return fs.asset(name=name)(fn)


def _parent() -> Any:
    @fs.asset(parallel=fs.Parallel(branches={b: b for b in BRANCHES}))
    def parent(context: fs.Context, branches: dict[str, Any]) -> dict[str, Any]:
        partition = str(context.partition)
        eid = AUDIT.write(context.run_id, "parent", partition, "join", context.attempt)
        trap(partition, "parent")
        return {"v": sum(b["v"] for b in branches.values()), "eid": eid,
                "pid": os.getpid(), "attempt": context.attempt}  # fmt: skip

    return parent


def make_pipeline() -> fs.Pipeline:
    """A new pipeline object, configured from the environment as it is now."""
    branches = [_branch(name, k) for k, name in enumerate(BRANCHES, start=1)]
    return fs.Pipeline("faults_joins", [*branches, _parent()])


pipeline = make_pipeline()
