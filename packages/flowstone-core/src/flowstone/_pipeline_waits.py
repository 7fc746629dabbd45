"""The part of :class:`~flowstone.Pipeline` that acts on waits: approvals, signal gates,
their expiry, and the housekeeping a daemon or sweeper runs (expire, prune, recover)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowstone.engine import resume
from flowstone.engine.pruning import prune_orphan_values
from flowstone.partitions import PartitionKey
from flowstone.records import Approval

if TYPE_CHECKING:
    from flowstone.engine.runner import StepRunner
    from flowstone.protocols import RunStore
    from flowstone.runs import RunResult
    from flowstone.runtime import Runtime

__all__ = ["Waits"]


_TICK_RETENTION = timedelta(days=7)  # schedule ticks; their cursor is far past them

class Waits:
    """``approvals``, ``approve``, ``reject``, ``signal``; ``expire_due``, ``prune``,
    ``recover``."""

    name: str
    store: RunStore
    runtime: Runtime
    runner: StepRunner

    if TYPE_CHECKING:

        def result(self, run_id: str) -> RunResult: ...

    def approvals(self, status: str | None = "pending") -> list[Approval]:
        return self.store.list_approvals(pipeline=self.name, status=status)

    def approve(
        self,
        approval_id: int | None = None,
        *,
        run_id: str | None = None,
        asset: str | None = None,
        partition: PartitionKey | None = None,
        by: str | None = None,
    ) -> RunResult:
        """Approve a pending approval (by id or by run/asset/partition) and resume the run."""
        approval = resume.find_approval(self.runner, approval_id, run_id, asset, partition)
        resume.decide(self.runner, approval, "approved", by=by)
        return self.result(approval.run_id)

    def reject(
        self,
        approval_id: int | None = None,
        *,
        run_id: str | None = None,
        asset: str | None = None,
        partition: PartitionKey | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> RunResult:
        """Reject a pending approval: the asset fails, the run finishes as failed."""
        approval = resume.find_approval(self.runner, approval_id, run_id, asset, partition)
        resume.decide(self.runner, approval, "rejected", by=by, reason=reason)
        return self.result(approval.run_id)

    def signal(self, token: str, payload: Any = None) -> RunResult:
        """Resume the asset waiting on the gate with ``token``; a token works once."""
        return self.result(resume.signal(self.runner, token, payload))

    # --- housekeeping (daemon / sweeper) ---------------------------------------------------
    def expire_due(self, now: datetime | None = None) -> int:
        """Fail expired approvals and expire gates (running ``on_timeout``), judged by the
        store's clock (the database's for a shared store); ``now`` overrides it (tests)."""
        return resume.expire_due(self.runner, now)

    def prune(self, now: datetime | None = None) -> int:
        """Delete route decisions older than ``route_retention``, schedule ticks older than
        a week (the schedule's cursor is past them; sensor run keys are kept, they
        de-duplicate) and values no record points at once older than ``value_retention``
        (see :mod:`flowstone.engine.pruning`); return how many."""
        at = now or datetime.now(UTC)
        retention = timedelta(seconds=self.runtime.policies.route_retention)
        pruned = self.store.prune_route_decisions(at - retention)
        pruned += self.store.prune_ticks(at - _TICK_RETENTION, prefix=f"schedule:{self.name}:")
        return pruned + prune_orphan_values(self.runtime, at)

    def recover(self, now: datetime | None = None, *, ready_for_seconds: float = 30.0) -> int:
        """Re-dispatch steps whose message was lost or whose worker died; finish waiting
        steps whose approval was decided by a process that died before resuming them."""
        return resume.recover(self.runner, now or datetime.now(UTC), ready_for_seconds)

