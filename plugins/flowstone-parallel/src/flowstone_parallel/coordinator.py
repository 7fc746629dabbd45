"""DurableParallelCoordinator: the in-process join semantics plus a durable join record in
the run store (it talks only to the RunStore protocol; registered as ``celery`` because the
Celery executor prefers it).

What is durable is already durable in the core, and this coordinator relies on it: the
branches are ordinary steps of the run, created with their edges in the one
``create_run`` transaction; each branch completion is one ``finish_step`` (a redelivered
completion is not applied); the join step's ``remaining_deps`` reaches zero in exactly
one ``finish_step``, which hands the join to exactly one caller; the join step is claimed
under a lease. What this coordinator adds is the record of the join itself (see
:mod:`flowstone_parallel.records`): which branch ended how, with the materialization ids
of every branch final (failed ones too). A join that ran is recorded in its own
materialization's metadata, so the record commits with the joined value in the same
``finish_step``, exactly once; a join that failed because a required branch failed has no
value, and its record is written once as a store step note. A join step attempted more than
once (its worker died mid-join, or its retry policy ran it again) is noted in the run's
audit log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

from flowstone.defaults.inline_parallel import InlineParallelCoordinator
from flowstone.engine import ParallelRequest
from flowstone.errors import ExecutionError
from flowstone_parallel.records import (
    JOIN_NOTE,
    METADATA_KEY,
    REPEATED_KIND,
    BranchRecord,
    JoinRecord,
)

__all__ = ["DurableParallelCoordinator"]

log = logging.getLogger("flowstone.parallel")


class DurableParallelCoordinator(InlineParallelCoordinator):
    """Joins parallel branches exactly as the in-process ``thread`` coordinator does and
    records each join once in the run store.

    Registered as ``celery`` in ``flowstone.parallel_coordinators``; the Celery executor
    prefers it when this distribution is installed, so pipelines need no change. It can be
    chosen explicitly with any executor: ``Pipeline(..., parallel_coordinator="celery")``.
    """

    name = "celery"

    def branch_results(self, request: ParallelRequest) -> dict[str, object]:
        """The join's ``branches`` argument: ``{branch: value | BranchFailed | BranchSkipped}``.

        Raises:
            ExecutionError: a required branch failed (every branch in ``all_or_nothing``
                mode); the join step then fails as ``upstream_failed``.
        """
        try:
            results = super().branch_results(request)
        except ExecutionError as exc:
            self._record(request, "failed", str(exc))
            raise
        self._record(request, "joined", "")
        return results

    def _record(
        self, request: ParallelRequest, outcome: Literal["joined", "failed"], error: str
    ) -> None:
        parallel = request.asset.parallel
        assert parallel is not None  # checked by super().branch_results
        store = request.runtime.store
        record = JoinRecord(
            run_id=request.run_id,
            asset=request.asset.name,
            partition=request.partition,
            mode=parallel.mode,
            outcome=outcome,
            error=error,
            branches=tuple(
                self._branch(request, branch, final) for branch, final in parallel.branches.items()
            ),
            recorded_at=datetime.now(UTC),
        )
        if request.attempt > 1:
            log.warning(
                "parallel join %s [%s] of run %s runs again (attempt %d)",
                request.asset.name, request.partition, request.run_id, request.attempt,
            )  # fmt: skip
            store.append_audit(
                request.run_id,
                REPEATED_KIND,
                asset=request.asset.name,
                partition=request.partition,
                detail={"attempt": request.attempt, "outcome": outcome},
            )
        if outcome == "joined":
            # recorded by finish_step with the joined value: once, whoever runs it
            request.metadata[METADATA_KEY] = record.to_dict()
            return
        store.add_step_note(  # first failure wins
            request.run_id, request.asset.name, request.partition, JOIN_NOTE, record.to_json()
        )

    @staticmethod
    def _branch(request: ParallelRequest, branch: str, final: str) -> BranchRecord:
        out = request.outcomes.get(branch)
        return BranchRecord(
            branch=branch,
            final=final,
            state=out.state if out is not None else "absent",
            # the records the join read (failed ones included), as the runner resolved them
            materialization_ids=out.materialization_ids if out is not None else (),
            detail=out.detail if out is not None else "branch did not run",
        )
