"""``MemoryRunStore``: the in-process, non-durable run store and reference implementation.

Every method runs under one lock, so each call is one atomic "transaction" and the store
is safe to share between the threads of an in-process executor. Values that a durable
store would serialise (tags, metadata, payloads, audit details) are validated and copied
through JSON, so code that works here behaves the same on SQLite or Postgres.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal

from flowstone.defaults import _run_store_rules as rules
from flowstone.errors import ApprovalError, RunNotFoundError, SignalError, StorageError
from flowstone.records import (
    TERMINAL_STEP_STATES,
    Approval,
    AuditEntry,
    Gate,
    ItemResult,
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
_MatKey = tuple[str, str, str]


class _RunState:
    """One run's plan: its steps (in plan order) and the dep graph in both directions."""

    __slots__ = ("dependents", "deps", "steps")

    def __init__(self) -> None:
        self.steps: dict[_Key, StepRecord] = {}
        self.deps: dict[_Key, tuple[_Key, ...]] = {}
        self.dependents: dict[_Key, list[_Key]] = {}


class MemoryRunStore:
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
        self._lock = threading.RLock()
        self._runs: dict[str, RunRecord] = {}
        self._plans: dict[str, _RunState] = {}
        self._mats: dict[str, MaterializationRecord] = {}
        self._mat_ids: dict[_MatKey, str] = {}
        self._mat_seq: dict[str, int] = {}
        self._downstream: dict[str, list[str]] = {}
        self._approvals: dict[int, Approval] = {}
        self._gates: dict[str, Gate] = {}
        self._routes: dict[_MatKey, tuple[str, datetime]] = {}
        self._cursors: dict[str, str] = {}
        self._ticks: set[tuple[str, str]] = set()
        self._audit: dict[str, list[AuditEntry]] = {}
        self._items: dict[_MatKey, dict[int, ItemResult]] = {}
        self._seq = 0
        self._next_approval = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # --- lifecycle -------------------------------------------------------------------
    def ping(self) -> None:
        """Always reachable."""

    def close(self) -> None:
        """Nothing to release; the data stays readable until the store is dropped."""

    # --- runs ------------------------------------------------------------------------
    def create_run(self, run: RunRecord, steps: Sequence[StepSpec]) -> tuple[StepRecord, ...]:
        remaining = rules.plan_remaining(run.run_id, steps)
        tags = rules.json_copy(dict(run.tags), f"tags of run {run.run_id!r}")
        now = rules.utc_now()
        plan = _RunState()
        ready: list[StepRecord] = []
        for spec, count in zip(steps, remaining, strict=True):
            key = (spec.asset, spec.partition)
            if spec.state == "succeeded":
                state: Any = "succeeded"
            else:
                state = "ready" if count == 0 else "pending"
            step = StepRecord(
                run_id=run.run_id,
                asset=spec.asset,
                partition=spec.partition,
                state=state,
                remaining_deps=count,
                materialization_id=spec.reused_materialization_id,
                updated_at=now,
            )
            plan.steps[key] = step
            plan.deps[key] = tuple(dict.fromkeys(spec.deps))
            for dep in plan.deps[key]:
                plan.dependents.setdefault(dep, []).append(key)
            if state == "ready":
                ready.append(step)
        status = rules.run_status_from({s.state for s in plan.steps.values()})
        with self._lock:
            if run.run_id in self._runs:
                raise StorageError(
                    f"run {run.run_id!r} already exists; run ids must be unique "
                    "(generate a new one for a new run)"
                )
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

    def list_runs(
        self, *, pipeline: str | None = None, status: RunStatus | None = None, limit: int = 50
    ) -> list[RunRecord]:
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if (pipeline is None or r.pipeline == pipeline)
                and (status is None or r.status == status)
            ]
        # dicts keep insertion order, so reversed() breaks created_at ties newest first
        runs.reverse()
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs[:limit]

    def set_run_status(self, run_id: str, status: RunStatus, *, error: str | None = None) -> None:
        with self._lock:
            run = self._run(run_id)
            self._runs[run_id] = replace(
                run, status=status, error=error, updated_at=rules.utc_now()
            )

    def cancel_run(self, run_id: str) -> bool:
        with self._lock:
            run = self._run(run_id)
            if run.status in rules.TERMINAL_RUN_STATUSES:
                return False
            now = rules.utc_now()
            steps = self._plans[run_id].steps
            for key, step in steps.items():
                if step.state not in TERMINAL_STEP_STATES:
                    steps[key] = replace(
                        step, state="cancelled", lease_expires_at=None, updated_at=now
                    )
            self._runs[run_id] = replace(run, status="cancelled", updated_at=now)
            self._append(run_id, "run_cancelled", None, None, {}, now)
            return True

    def reopen_run(self, run_id: str) -> tuple[StepRecord, ...]:
        with self._lock:
            run = self._run(run_id)
            if run.status not in ("failed", "cancelled"):
                return ()
            now = rules.utc_now()
            plan = self._plans[run_id]
            reopened = [k for k, s in plan.steps.items() if s.state in rules.REOPENABLE_STEP_STATES]
            for key in reopened:
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

    def list_steps(self, run_id: str) -> list[StepRecord]:
        with self._lock:
            plan = self._plans.get(run_id)
            return [] if plan is None else list(plan.steps.values())

    def claim_step(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> StepRecord | None:
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            if step is None or self._runs[run_id].status == "cancelled":
                return None
            now = rules.utc_now()
            if step.state == "ready":
                if step.not_before is not None and step.not_before > now:
                    return None
            elif not (
                step.state == "running"
                and step.lease_expires_at is not None
                and step.lease_expires_at <= now
            ):
                return None
            claimed = replace(
                step,
                state="running",
                attempt=step.attempt + 1,
                owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            self._plans[run_id].steps[(asset, partition)] = claimed
            return claimed

    def renew_lease(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> bool:
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            if step is None or step.state != "running" or step.owner != owner:
                return False
            now = rules.utc_now()
            self._plans[run_id].steps[(asset, partition)] = replace(
                step, lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now
            )
            return True

    def retry_step(
        self, run_id: str, asset: str, partition: str, *, not_before: datetime, error: str
    ) -> bool:
        not_before = rules.require_utc(not_before, "not_before")
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            if step is None or step.state != "running":
                return False
            now = rules.utc_now()
            self._plans[run_id].steps[(asset, partition)] = replace(
                step,
                state="ready",
                owner=None,
                lease_expires_at=None,
                not_before=not_before,
                error=error,
                updated_at=now,
            )
            detail = {"attempt": step.attempt, "error": error, "not_before": not_before.isoformat()}
            self._append(run_id, "step_retry", asset, partition, detail, now)
            return True

    def finish_step(
        self, run_id: str, asset: str, partition: str, outcome: StepOutcome
    ) -> StepTransition:
        where = f"finish_step(run {run_id!r}, asset {asset!r}, partition {partition!r})"
        rules.check_outcome(outcome, where)
        with self._lock:
            step = self.get_step(run_id, asset, partition)
            if step is None:
                raise rules.step_not_found(run_id, asset, partition)
            if rules.is_unchanged(step.state, outcome):
                return StepTransition(applied=False)
            if step.state not in rules.FINISHABLE_STEP_STATES:
                raise rules.not_finishable(run_id, asset, partition, step.state)
            mat, approval, gate = self._prepare(run_id, asset, partition, outcome, where)
            now = rules.utc_now()
            detail: dict[str, Any] = {"attempt": step.attempt}
            if outcome.error is not None:
                detail["error"] = outcome.error
            mat_id = step.materialization_id
            if mat is not None:
                mat_id = self._upsert_materialization(mat)
                detail["materialization_id"] = mat_id
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
            return StepTransition(
                applied=True, ready=tuple(ready), run_status=self._recompute(run_id, now)
            )

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

    # --- materializations & lineage ----------------------------------------------------
    def get_materialization(self, materialization_id: str) -> MaterializationRecord | None:
        with self._lock:
            return self._mats.get(materialization_id)

    def find_materialization(
        self, pipeline: str, asset: str, partition: str, *, run_id: str | None = None
    ) -> MaterializationRecord | None:
        with self._lock:
            if run_id is not None:
                mat_id = self._mat_ids.get((run_id, asset, partition))
                mat = None if mat_id is None else self._mats[mat_id]
                return mat if mat is not None and mat.pipeline == pipeline else None
            best: MaterializationRecord | None = None
            best_key: tuple[datetime | None, int] | None = None
            for mat in self._mats.values():
                if (
                    mat.pipeline != pipeline
                    or mat.asset != asset
                    or mat.partition != partition
                    or mat.state != "succeeded"
                    or mat.invalidated
                ):
                    continue
                key = (mat.finished_at, self._mat_seq[mat.id])
                if best_key is None or _newer(key, best_key):
                    best, best_key = mat, key
            return best

    def list_materializations(
        self,
        pipeline: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[MaterializationRecord]:
        with self._lock:
            found = [
                m
                for m in self._mats.values()
                if m.pipeline == pipeline
                and (asset is None or m.asset == asset)
                and (partition is None or m.partition == partition)
                and (run_id is None or m.run_id == run_id)
            ]
            found.sort(key=lambda m: self._mat_seq[m.id], reverse=True)
            return found[:limit]

    def invalidate(self, pipeline: str, asset: str, partition: str | None = None) -> int:
        with self._lock:
            hits = [
                m
                for m in self._mats.values()
                if m.pipeline == pipeline
                and m.asset == asset
                and m.state == "succeeded"
                and not m.invalidated
                and (partition is None or m.partition == partition)
            ]
            for m in hits:
                self._mats[m.id] = replace(m, invalidated=True)
            return len(hits)

    def upstream(self, materialization_id: str) -> list[MaterializationRecord]:
        with self._lock:
            mat = self._mats.get(materialization_id)
            if mat is None:
                return []
            return [self._mats[i] for i in mat.upstream if i in self._mats]

    def downstream(self, materialization_id: str) -> list[MaterializationRecord]:
        with self._lock:
            ids = self._downstream.get(materialization_id, [])
            found = [self._mats[i] for i in ids if i in self._mats]
            found.sort(key=lambda m: self._mat_seq[m.id])
            return found

    # --- approvals & gates -------------------------------------------------------------
    def get_approval(self, approval_id: int) -> Approval | None:
        with self._lock:
            return self._approvals.get(approval_id)

    def find_approval(self, run_id: str, asset: str, partition: str) -> Approval | None:
        with self._lock:
            for approval in reversed(self._approvals.values()):
                if (approval.run_id, approval.asset, approval.partition) == (
                    run_id,
                    asset,
                    partition,
                ):
                    return approval
            return None

    def list_approvals(
        self, *, pipeline: str | None = None, status: str | None = None
    ) -> list[Approval]:
        with self._lock:
            return [
                a
                for a in self._approvals.values()
                if (pipeline is None or a.pipeline == pipeline)
                and (status is None or a.status == status)
            ]

    def decide_approval(
        self,
        approval_id: int,
        status: Literal["approved", "rejected", "expired"],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> Approval:
        with self._lock:
            approval = self._approvals.get(approval_id)
            if approval is None:
                raise ApprovalError(
                    f"approval {approval_id} does not exist; list pending approvals with "
                    "`flowstone approvals` to find the right id"
                )
            if approval.status != "pending":
                raise ApprovalError(
                    f"approval {approval_id} was already {approval.status}"
                    f"{f' by {approval.decided_by}' if approval.decided_by else ''}; "
                    "an approval can be decided only once"
                )
            now = rules.utc_now()
            decided = replace(approval, status=status, decided_by=by, decided_at=now, reason=reason)
            self._approvals[approval_id] = decided
            detail = {"approval_id": approval_id, "by": by, "reason": reason}
            self._append(
                approval.run_id,
                f"approval_{status}",
                approval.asset,
                approval.partition,
                detail,
                now,
            )
            return decided

    def due_approvals(self, now: datetime) -> list[Approval]:
        now = rules.require_utc(now, "now")
        with self._lock:
            return [
                a
                for a in self._approvals.values()
                if a.status == "pending" and a.expires_at is not None and a.expires_at <= now
            ]

    def get_gate(self, token_hash: str) -> Gate | None:
        with self._lock:
            return self._gates.get(token_hash)

    def consume_gate(
        self, token_hash: str, *, payload: Any, status: Literal["signaled", "expired"]
    ) -> Gate:
        payload = rules.json_copy(payload, "signal payload")
        with self._lock:
            gate = self._gates.get(token_hash)
            if gate is None:
                raise SignalError(
                    "unknown signal token; check that the token was copied whole and "
                    "belongs to this pipeline's store"
                )
            if gate.status != "pending":
                raise SignalError(
                    f"signal gate of run {gate.run_id!r} asset {gate.asset!r} is already "
                    f"{gate.status}; a token works only once"
                )
            now = rules.utc_now()
            used = replace(gate, status=status, payload=payload, signaled_at=now)
            self._gates[token_hash] = used
            self._append(gate.run_id, f"gate_{status}", gate.asset, gate.partition, {}, now)
            return used

    def due_gates(self, now: datetime) -> list[Gate]:
        now = rules.require_utc(now, "now")
        with self._lock:
            return [
                g
                for g in self._gates.values()
                if g.status == "pending" and g.expires_at is not None and g.expires_at <= now
            ]

    # --- routing -----------------------------------------------------------------------
    def record_route_decision(self, run_id: str, router: str, partition: str, branch: str) -> str:
        with self._lock:
            key = (run_id, router, partition)
            if key not in self._routes:
                self._routes[key] = (branch, rules.utc_now())
            return self._routes[key][0]

    def get_route_decision(self, run_id: str, router: str, partition: str) -> str | None:
        with self._lock:
            found = self._routes.get((run_id, router, partition))
            return None if found is None else found[0]

    def prune_route_decisions(self, older_than: datetime) -> int:
        older_than = rules.require_utc(older_than, "older_than")
        with self._lock:
            old = [k for k, (_, at) in self._routes.items() if at < older_than]
            for key in old:
                del self._routes[key]
            return len(old)

    # --- cursors & ticks ---------------------------------------------------------------
    def get_cursor(self, name: str) -> str | None:
        with self._lock:
            return self._cursors.get(name)

    def set_cursor(self, name: str, value: str, *, expected: str | None = None) -> bool:
        with self._lock:
            if self._cursors.get(name) != expected:
                return False
            self._cursors[name] = value
            return True

    def claim_tick(self, name: str, tick: str) -> bool:
        with self._lock:
            if (name, tick) in self._ticks:
                return False
            self._ticks.add((name, tick))
            return True

    # --- audit -------------------------------------------------------------------------
    def append_audit(
        self,
        run_id: str,
        kind: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        copied = rules.json_copy(dict(detail or {}), f"audit detail of {kind!r}")
        with self._lock:
            self._append(run_id, kind, asset, partition, copied, rules.utc_now())

    def list_audit(self, run_id: str) -> list[AuditEntry]:
        with self._lock:
            return list(self._audit.get(run_id, ()))

    # --- scatter item results ------------------------------------------------------------
    def save_item_results(
        self, run_id: str, asset: str, partition: str, results: Sequence[ItemResult]
    ) -> None:
        with self._lock:
            items = self._items.setdefault((run_id, asset, partition), {})
            for result in results:
                items[result.index] = result

    def load_item_results(self, run_id: str, asset: str, partition: str) -> list[ItemResult]:
        with self._lock:
            items = self._items.get((run_id, asset, partition), {})
            return [items[i] for i in sorted(items)]

    # --- internals (called with the lock held) ------------------------------------------
    def _run(self, run_id: str) -> RunRecord:
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFoundError(
                f"no run {run_id!r} in the memory run store; list runs with `flowstone runs`"
            )
        return run

    def _append(
        self,
        run_id: str,
        kind: str,
        asset: str | None,
        partition: str | None,
        detail: Mapping[str, Any],
        at: datetime,
    ) -> None:
        entry = AuditEntry(self._next(), run_id, at, kind, asset, partition, dict(detail))
        self._audit.setdefault(run_id, []).append(entry)

    def _recompute(self, run_id: str, now: datetime) -> RunStatus | None:
        run = self._runs[run_id]
        status = rules.run_status_from({s.state for s in self._plans[run_id].steps.values()})
        if status != run.status:
            self._runs[run_id] = replace(run, status=status, updated_at=now)
            self._append(run_id, f"run_{status}", None, None, {}, now)
        return status if status != run.status or status != "running" else None

    def _prepare(
        self, run_id: str, asset: str, partition: str, outcome: StepOutcome, where: str
    ) -> tuple[MaterializationRecord | None, Approval | None, Gate | None]:
        """Bind the outcome's records to the step and JSON-check them before any write."""
        mat = approval = gate = None
        if outcome.materialization is not None:
            given = outcome.materialization
            mat = replace(
                given,
                run_id=run_id,
                asset=asset,
                partition=partition,
                upstream=tuple(dict.fromkeys(given.upstream)),
                metadata=rules.json_copy(
                    dict(given.metadata), f"metadata of materialization {given.id!r}"
                ),
            )
            clash = self._mats.get(mat.id)
            if clash is not None and (clash.run_id, clash.asset, clash.partition) != (
                run_id,
                asset,
                partition,
            ):
                raise StorageError(
                    f"{where}: materialization id {mat.id!r} is already used by run "
                    f"{clash.run_id!r} asset {clash.asset!r}; ids must be unique"
                )
        if outcome.approval is not None:
            approval = replace(
                outcome.approval,
                run_id=run_id,
                asset=asset,
                partition=partition,
                status="pending",
                metadata=rules.json_copy(
                    dict(outcome.approval.metadata), f"metadata of approval for {asset!r}"
                ),
            )
        if outcome.gate is not None:
            if outcome.gate.token_hash in self._gates:
                raise StorageError(f"{where}: a gate with this token hash already exists")
            gate = replace(
                outcome.gate,
                run_id=run_id,
                asset=asset,
                partition=partition,
                status="pending",
                payload=rules.json_copy(outcome.gate.payload, f"payload of gate for {asset!r}"),
                metadata=rules.json_copy(
                    dict(outcome.gate.metadata), f"metadata of gate for {asset!r}"
                ),
            )
        return mat, approval, gate

    def _upsert_materialization(self, mat: MaterializationRecord) -> str:
        key = (mat.run_id, mat.asset, mat.partition)
        old_id = self._mat_ids.get(key)
        if old_id is not None:
            old = self._mats.pop(old_id)
            for up in old.upstream:
                self._downstream[up].remove(old_id)
            self._mat_seq[mat.id] = self._mat_seq.pop(old_id)
            if old_id != mat.id:
                # last write wins: records that named the old id as input now name the new one
                for down_id in self._downstream.pop(old_id, []):
                    down = self._mats[down_id]
                    self._mats[down_id] = replace(
                        down, upstream=tuple(mat.id if u == old_id else u for u in down.upstream)
                    )
                    self._downstream.setdefault(mat.id, []).append(down_id)
        else:
            self._mat_seq[mat.id] = self._next()
        self._mats[mat.id] = mat
        self._mat_ids[key] = mat.id
        for up in mat.upstream:
            self._downstream.setdefault(up, []).append(mat.id)
        return mat.id


def _newer(a: tuple[datetime | None, int], b: tuple[datetime | None, int]) -> bool:
    """Order by finished_at (missing counts as oldest), then by insertion."""
    if a[0] != b[0]:
        if a[0] is None:
            return False
        if b[0] is None:
            return True
        return a[0] > b[0]
    return a[1] > b[1]
