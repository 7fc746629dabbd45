"""``MemoryRunStore``: the in-process, non-durable run store and reference implementation.

Every method runs under one lock, so each call is one atomic "transaction" and the store
is safe to share between the threads of an in-process executor. Values that a durable
store would serialise (tags, metadata, payloads, audit details) are validated and copied
through JSON, so code that works here behaves the same on SQLite or Postgres.

This module holds the scheduling (runs and steps); materializations, approvals, gates and
the other records beside them are in :mod:`flowstone.defaults.memory_records`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from flowstone import store_rules as rules
from flowstone.defaults.memory_io import MemoryIOManager
from flowstone.defaults.memory_records import MemoryRecords
from flowstone.errors import StorageError
from flowstone.protocols import ClaimedReads
from flowstone.records import (
    TERMINAL_STEP_STATES,
    Approval,
    Continuation,
    Fence,
    Gate,
    MaterializationRecord,
    RunRecord,
    RunStatus,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)

__all__ = ["MemoryRunStore"]

_Key = tuple[str, str]


class _RunState:
    """One run's plan: its steps (in plan order) and the dep graph in both directions."""

    __slots__ = ("dependents", "deps", "steps")

    def __init__(self) -> None:
        self.steps: dict[_Key, StepRecord] = {}
        self.deps: dict[_Key, tuple[_Key, ...]] = {}
        self.dependents: dict[_Key, list[_Key]] = {}


class MemoryRunStore(MemoryRecords):
    """A run store kept in process memory; everything is lost when the process exits.

    Use it for tests and throwaway runs; use :class:`~flowstone.defaults.sqlite_store.
    SQLiteRunStore` when runs must survive a restart or be approved from another process.

    Example:
        >>> store = MemoryRunStore()
        >>> store.name
        'memory'
    """

    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._runs: dict[str, RunRecord] = {}
        self._plans: dict[str, _RunState] = {}
        # (run, asset, partition) -> (re-sends since the last claim, the last one's time)
        self._resent: dict[tuple[str, str, str], tuple[int, datetime]] = {}

    # --- lifecycle -------------------------------------------------------------------
    def ping(self) -> None:
        """Always reachable."""

    def close(self) -> None:
        """Nothing to release; the data stays readable until the store is dropped."""

    def default_io_manager(self) -> MemoryIOManager:
        """Values live in memory too: a new :class:`~flowstone.defaults.memory_io.
        MemoryIOManager`."""
        return MemoryIOManager()

    # --- runs ------------------------------------------------------------------------
    def create_run(self, run: RunRecord, steps: Sequence[StepSpec]) -> tuple[StepRecord, ...]:
        planned = rules.plan_steps(run.run_id, steps)
        tags = rules.json_copy(dict(run.tags), f"tags of run {run.run_id!r}")
        now = self.clock()
        plan = _RunState()
        ready: list[StepRecord] = []
        for p in planned:
            key = (p.spec.asset, p.spec.partition)
            step = StepRecord(
                run_id=run.run_id,
                asset=p.spec.asset,
                partition=p.spec.partition,
                state=p.state,
                remaining_deps=p.remaining_deps,
                materialization_id=p.spec.reused_materialization_id,
                updated_at=now,
            )
            plan.steps[key] = step
            plan.deps[key] = p.deps
            for dep in p.deps:
                plan.dependents.setdefault(dep, []).append(key)
            if p.state == "ready":
                ready.append(step)
        status = rules.run_status_from({s.state for s in plan.steps.values()})
        with self._lock:
            if run.run_id in self._runs:
                raise rules.duplicate_run(run.run_id)
            self._runs[run.run_id] = replace(
                run,
                status=status,
                tags=tags,
                created_at=rules.require_utc(run.created_at, "RunRecord.created_at"),
                updated_at=now,
            )
            self._plans[run.run_id] = plan
            self._append(run.run_id, "run_created", None, None, {"steps": len(steps)}, now)
        return tuple(ready)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """The runs with these ids (unknown ids left out), in one read."""
        with self._lock:
            return [run for rid in run_ids if (run := self._runs.get(rid)) is not None]

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        after: rules.RunKey | None = None,
    ) -> list[RunRecord]:
        start = rules.check_run_keyset(after, offset)
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if (pipeline is None or r.pipeline == pipeline)
                and (status is None or r.status == status)
                and (start is None or rules.run_key(r) < start)
            ]
        runs.sort(key=rules.run_key, reverse=True)
        return runs[offset : offset + limit]

    def set_run_status(self, run_id: str, status: RunStatus, *, error: str | None = None) -> None:
        with self._lock:
            run = self._run(run_id)
            self._runs[run_id] = replace(run, status=status, error=error, updated_at=self.clock())

    def cancel_run(self, run_id: str) -> bool:
        with self._lock:
            run = self._run(run_id)
            if run.status in rules.TERMINAL_RUN_STATUSES:
                return False
            now = self.clock()
            steps = self._plans[run_id].steps
            for key, step in steps.items():
                if step.state not in TERMINAL_STEP_STATES:
                    steps[key] = replace(
                        step, state="cancelled", owner=None, lease_expires_at=None, updated_at=now
                    )
            self._runs[run_id] = replace(run, status="cancelled", updated_at=now)
            self._cancel_waits(run_id)
            self._append(run_id, "run_cancelled", None, None, {}, now)
            return True

    def reopen_run(self, run_id: str) -> tuple[StepRecord, ...]:
        with self._lock:
            run = self._run(run_id)
            if run.status not in ("failed", "cancelled"):
                return ()
            now = self.clock()
            plan = self._plans[run_id]
            reopened = [k for k, s in plan.steps.items() if s.state in rules.REOPENABLE_STEP_STATES]
            for key in reopened:
                self._resent.pop((run_id, *key), None)
                plan.steps[key] = replace(
                    plan.steps[key],
                    state="pending",
                    attempt=0,
                    owner=None,
                    lease_expires_at=None,
                    not_before=None,
                    materialization_id=None,
                    error=None,
                    updated_at=now,
                )
            ready: list[StepRecord] = []
            for key in reopened:
                count = sum(
                    1 for dep in plan.deps[key] if plan.steps[dep].state not in TERMINAL_STEP_STATES
                )
                step = replace(
                    plan.steps[key],
                    remaining_deps=count,
                    state="ready" if count == 0 else "pending",
                )
                plan.steps[key] = step
                if count == 0:
                    ready.append(step)
            status = rules.run_status_from({s.state for s in plan.steps.values()})
            self._runs[run_id] = replace(run, status=status, error=None, updated_at=now)
            self._append(run_id, "run_reopened", None, None, {"steps": len(reopened)}, now)
            return tuple(ready)

    # --- steps -----------------------------------------------------------------------
    def get_step(self, run_id: str, asset: str, partition: str) -> StepRecord | None:
        with self._lock:
            plan = self._plans.get(run_id)
            return None if plan is None else plan.steps.get((asset, partition))

    def get_step_results(
        self, run_id: str, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[StepRecord, MaterializationRecord | None]]:
        return self._step_results(run_id, keys)

    def _step_results(
        self, run_id: str, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[StepRecord, MaterializationRecord | None]]:
        with self._lock:
            plan = self._plans.get(run_id)
            if plan is None:
                return []
            steps = [s for k in dict.fromkeys(keys) if (s := plan.steps.get(k)) is not None]
            return [
                (s, None if s.materialization_id is None else self._mats.get(s.materialization_id))
                for s in steps
            ]

    def list_steps(self, run_id: str) -> list[StepRecord]:
        with self._lock:
            plan = self._plans.get(run_id)
            return [] if plan is None else list(plan.steps.values())

    def claim_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        owner: str,
        lease_seconds: float,
        pipeline: str | None = None,
    ) -> StepRecord | None:
        return self._claim(run_id, asset, partition, owner, lease_seconds, pipeline)

    def _claim(
        self,
        run_id: str,
        asset: str,
        partition: str,
        owner: str,
        lease_seconds: float,
        pipeline: str | None = None,
    ) -> StepRecord | None:
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            if step is None or self._runs[run_id].status == "cancelled":
                return None
            if not rules.claimable_by(pipeline, self._runs[run_id].pipeline):
                return None
            now = self.clock()
            if step.state == "ready":
                if step.not_before is not None and step.not_before > now:
                    return None
            elif not (
                step.state == "running"
                and step.lease_expires_at is not None
                and step.lease_expires_at <= now
            ):
                return None
            queued_s, took_over = rules.claim_facts(
                step.state, step.owner, step.updated_at, step.not_before, claimer=owner, now=now
            )
            claimed = replace(
                step,
                state="running",
                attempt=step.attempt + 1,
                owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                not_before=None,
                updated_at=now,
            )
            self._plans[run_id].steps[(asset, partition)] = claimed
            self._resent.pop((run_id, asset, partition), None)
            return replace(claimed, queued_s=queued_s, took_over=took_over)

    def renew_lease(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        owner: str,
        lease_seconds: float,
        attempt: int | None = None,
    ) -> bool:
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            if step is None:
                return False
            fence = Fence(owner, step.attempt if attempt is None else attempt)
            if not rules.fence_holds(fence, step.state, step.owner, step.attempt):
                return False
            now = self.clock()
            self._plans[run_id].steps[(asset, partition)] = replace(
                step, lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now
            )
            return True

    def retry_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        delay_seconds: float,
        error: str,
        fence: Fence | None = None,
    ) -> StepRecord | None:
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            if step is None or step.state != "running":
                return None
            if not rules.fence_holds(fence, step.state, step.owner, step.attempt):
                return None
            now = self.clock()
            not_before = now + timedelta(seconds=delay_seconds)
            retried = replace(
                step,
                state="ready",
                owner=None,
                lease_expires_at=None,
                not_before=not_before,
                error=error,
                updated_at=now,
            )
            self._plans[run_id].steps[(asset, partition)] = retried
            detail = rules.retry_detail(step.attempt, error, not_before)
            self._append(run_id, "step_retry", asset, partition, detail, now)
            return retried

    def finish_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        *,
        then: Continuation | None = None,
        fence: Fence | None = None,
    ) -> StepTransition:
        return self._finish(run_id, asset, partition, outcome, then, fence)[0]

    def finish_step_reading(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        *,
        then: Continuation,
        sources: Mapping[str, str],
        fence: Fence | None = None,
    ) -> tuple[StepTransition, ClaimedReads | None]:
        """``finish_step``, returning the claimed continuation's dependency records too
        (:class:`~flowstone.protocols.ContinuationReads`; values stay in their IO
        managers: ``sources`` is not read)."""
        return self._finish(run_id, asset, partition, outcome, then, fence)

    def _finish(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        then: Continuation | None,
        fence: Fence | None,
    ) -> tuple[StepTransition, ClaimedReads | None]:
        where = f"finish_step(run {run_id!r}, asset {asset!r}, partition {partition!r})"
        bound = rules.bind_outcome(run_id, asset, partition, outcome, where)
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            if not rules.finish_applies(
                None if step is None else step.state, outcome, run_id, asset, partition,
                fence=fence,
                owner=None if step is None else step.owner,
                attempt=0 if step is None else step.attempt,
            ):  # fmt: skip
                return StepTransition(applied=False), None
            assert step is not None  # finish_applies raised otherwise
            mat, approval, gate = self._records(bound, where)
            now = self.clock()
            detail = rules.finish_detail(step.attempt, outcome)
            mat_id = step.materialization_id
            if mat is not None:
                mat_id = self._upsert_materialization(mat)
            if approval is not None:
                self._next_approval += 1
                approval = replace(approval, id=self._next_approval)
                self._approvals[approval.id] = approval
                detail["approval_id"] = approval.id
            if gate is not None:
                self._gates[gate.token_hash] = gate
            plan = self._plans[run_id]
            plan.steps[(asset, partition)] = replace(
                step,
                state=outcome.state,
                materialization_id=mat_id,
                error=outcome.error,
                owner=None,
                lease_expires_at=None,
                updated_at=now,
            )
            ready: list[StepRecord] = []
            if outcome.state != "waiting":
                for key in plan.dependents.get((asset, partition), ()):
                    dependent = plan.steps[key]
                    if dependent.state != "pending":
                        continue
                    count = dependent.remaining_deps - 1
                    dependent = replace(
                        dependent,
                        remaining_deps=count,
                        state="ready" if count == 0 else "pending",
                        updated_at=now,
                    )
                    plan.steps[key] = dependent
                    if count == 0:
                        ready.append(dependent)
            self._append(run_id, f"step_{outcome.state}", asset, partition, detail, now)
            claimed = reads = None
            pick = rules.continuation_key(ready, now) if then is not None else None
            if then is not None and pick is not None:
                claimed = self._claim(run_id, *pick, then.owner, then.lease_seconds)
                ready = [r for r in ready if (r.asset, r.partition) != pick]
                if claimed is not None:
                    inputs = tuple(self._step_results(run_id, plan.deps.get(pick, ())))
                    reads = ClaimedReads(inputs=inputs)
            transition = StepTransition(
                applied=True,
                ready=tuple(ready),
                run_status=self._recompute(run_id, now),
                claimed=claimed,
            )
            return transition, reads

    def resend_steps(
        self,
        *,
        ready_for_seconds: float,
        pipeline: str | None = None,
        limit: int = rules.RESEND_BATCH,
    ) -> list[StepRecord]:
        with self._lock:
            now = self.clock()
            due: list[tuple[tuple[bool, datetime], StepRecord]] = []
            for run_id, plan in self._plans.items():
                run = self._runs[run_id]
                if run.status != "running" or not rules.claimable_by(pipeline, run.pipeline):
                    continue
                for s in plan.steps.values():
                    resends, resent_at = self._resent.get((run_id, s.asset, s.partition), (0, None))
                    if rules.resend_due(
                        s.state, now=now, ready_for_seconds=ready_for_seconds,
                        updated_at=s.updated_at, not_before=s.not_before,
                        lease_expires_at=s.lease_expires_at, resent_at=resent_at,
                        resends=resends,
                    ):  # fmt: skip
                        # never re-sent first, then the oldest
                        order = (resent_at is not None, resent_at or s.updated_at or now)
                        due.append((order, s))
            due.sort(key=lambda d: d[0])
            picked = [s for _, s in due[: max(0, limit)]]
            for s in picked:
                key = (s.run_id, s.asset, s.partition)
                self._resent[key] = (self._resent.get(key, (0, now))[0] + 1, now)
            return picked

    def stale_steps(self, now: datetime, *, ready_for_seconds: float) -> list[StepRecord]:
        now = rules.require_utc(now, "now")
        cutoff = now - timedelta(seconds=ready_for_seconds)
        with self._lock:
            found: list[StepRecord] = []
            for run_id, plan in self._plans.items():
                if self._runs[run_id].status != "running":
                    continue
                for s in plan.steps.values():
                    if s.state == "ready":
                        # ready since its last change, or since not_before for a retry
                        since = s.updated_at or now
                        if s.not_before is not None:
                            since = max(since, s.not_before)
                        if since <= cutoff:
                            found.append(s)
                    elif (
                        s.state == "running"
                        and s.lease_expires_at is not None
                        and (s.lease_expires_at <= now)
                    ):
                        found.append(s)
            return found

    # --- internals (called with the lock held) ------------------------------------------
    def _run(self, run_id: str) -> RunRecord:
        run = self._runs.get(run_id)
        if run is None:
            raise rules.run_not_found(run_id, "memory run store")
        return run

    def _recompute(self, run_id: str, now: datetime) -> RunStatus | None:
        run = self._runs[run_id]
        status = rules.next_run_status(
            run.status, rules.run_status_from({s.state for s in self._plans[run_id].steps.values()})
        )
        if status != run.status:
            self._runs[run_id] = replace(run, status=status, updated_at=now)
            self._append(run_id, f"run_{status}", None, None, {}, now)
        return rules.reported_status(run.status, status)

    def _hold_wait(self, gate: Gate, claim: Continuation, now: datetime) -> bool:
        step = self.get_step(gate.run_id, gate.asset, gate.partition)
        if step is None or step.state != "waiting":
            return False
        self._plans[gate.run_id].steps[(gate.asset, gate.partition)] = _held(step, claim, now)
        return True

    def take_over_wait(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> StepRecord | None:
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            now = self.clock()
            if step is None or not rules.wait_takeable(
                step.state, step.owner, step.lease_expires_at, owner, now
            ):
                return None
            held = _held(step, Continuation(owner, lease_seconds), now)
            self._plans[run_id].steps[(asset, partition)] = held
            return held

    def _records(
        self, bound: rules.BoundOutcome, where: str
    ) -> tuple[MaterializationRecord | None, Approval | None, Gate | None]:
        """The outcome's records as this store keeps them (JSON copied), checked against
        the ids already taken before any write."""
        mat, approval, gate = bound.materialization, bound.approval, bound.gate
        if mat is not None:
            mat = replace(mat, metadata=json.loads(bound.materialization_metadata_json or "{}"))
            clash = self._mats.get(mat.id)
            if clash is not None and (clash.run_id, clash.asset, clash.partition) != (
                mat.run_id,
                mat.asset,
                mat.partition,
            ):
                raise StorageError(
                    f"{where}: materialization id {mat.id!r} is already used by run "
                    f"{clash.run_id!r} asset {clash.asset!r}; ids must be unique"
                )
        if approval is not None:
            approval = replace(approval, metadata=json.loads(bound.approval_metadata_json or "{}"))
        if gate is not None:
            if gate.token_hash in self._gates:
                raise StorageError(f"{where}: a gate with this token hash already exists")
            gate = replace(
                gate,
                payload=json.loads(bound.gate_payload_json or "null"),
                metadata=json.loads(bound.gate_metadata_json or "{}"),
            )
        return mat, approval, gate


def _held(step: StepRecord, claim: Continuation, now: datetime) -> StepRecord:
    """``step`` (waiting) held by ``claim`` for resolving its wait: the next attempt."""
    return replace(
        step,
        attempt=step.attempt + 1,
        owner=claim.owner,
        lease_expires_at=now + timedelta(seconds=claim.lease_seconds),
        updated_at=now,
    )
