"""The in-process parallel coordinator (registered as ``thread``: it needs no threads of its own).

Branches are ordinary steps of the run, so the executor already runs them concurrently
and the store makes the join step ready exactly once, when the last branch final
finishes. This coordinator turns the branch outcomes into the join's ``branches`` argument
and enforces the failure mode.
"""

from __future__ import annotations

from typing import Any

from flowstone.engine.requests import ParallelRequest
from flowstone.errors import ExecutionError
from flowstone.parallel import BranchFailed, BranchSkipped

__all__ = ["InlineParallelCoordinator"]


class InlineParallelCoordinator:
    """Collects branch outcomes for the join in the process that runs it; no durable record."""

    name = "thread"

    def branch_results(self, request: ParallelRequest) -> dict[str, object]:
        parallel = request.asset.parallel
        if parallel is None:
            raise ExecutionError(f"asset {request.asset.name!r} is not a parallel asset")
        results: dict[str, Any] = {}
        for branch in parallel.branches:
            out = request.outcomes.get(branch)
            if out is None or out.state == "absent":
                results[branch] = BranchSkipped(branch, "branch did not run")
            elif out.state == "succeeded":
                results[branch] = out.value
            elif out.state == "skipped":
                results[branch] = BranchSkipped(branch, out.detail)
            elif parallel.is_required(branch):
                raise ExecutionError(
                    f"parallel asset {request.asset.name!r}: required branch {branch!r} failed "
                    f"({out.detail})"
                )
            else:
                results[branch] = BranchFailed(branch, out.detail)
        return results
