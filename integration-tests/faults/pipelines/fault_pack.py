"""The pack fault test's pipeline: sixteen independent assets ``k00`` ... ``k15``, each
audited and trapped like the fault DAG's assets (see ``fault_dag.py``): a run with more
ready steps than the workers have slots, so its steps travel several to a message."""

from __future__ import annotations

from typing import Any

from fault_dag import _asset

import flowstone as fs

N = 16


def _make(i: int) -> Any:
    def fn(context: fs.Context) -> dict[str, Any]:
        return _asset(context, i)

    return fs.asset(name=f"k{i:02d}")(fn)


ASSETS = tuple(f"k{i:02d}" for i in range(N))


def make_pipeline() -> fs.Pipeline:
    """A new pipeline object, configured from the environment as it is now."""
    return fs.Pipeline("faults_pack", [_make(i) for i in range(N)])


pipeline = make_pipeline()
