"""``MemoryRecords``: what the memory run store keeps beside its runs and steps.

Materializations and their lineage, approvals and signal gates, route decisions, cursors
and schedule ticks, the audit trail, scatter item results and step notes. The step lifecycle that
writes most of them lives in :mod:`flowstone.defaults.memory_store`; the lock held here
is the one every method of the store runs under.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

from flowstone import store_rules as rules
from flowstone.errors import ApprovalError, SignalError
from flowstone.records import (
    Approval,
    AuditEntry,
    Continuation,
    Gate,
    ItemResult,
    MaterializationRecord,
)

__all__ = ["MemoryRecords"]

_MatKey = tuple[str, str, str]


class MemoryRecords:
    """The records half of :class:`~flowstone.defaults.memory_store.MemoryRunStore`
    (its base class; not meant to be used on its own).
    """

    def __init__(self) -> None:
        self.clock: Callable[[], datetime] = rules.utc_now
        """The store's clock, the one place its methods read the time (replace it to test)."""
        self._lock = threading.RLock()
        self._mats: dict[str, MaterializationRecord] = {}
        self._mat_ids: dict[_MatKey, str] = {}
        self._mat_seq: dict[str, int] = {}
        self._downstream: dict[str, list[str]] = {}
        self._approvals: dict[int, Approval] = {}
        self._gates: dict[str, Gate] = {}
        self._routes: dict[_MatKey, tuple[str, datetime]] = {}
        self._cursors: dict[str, str] = {}
        self._ticks: dict[tuple[str, str], datetime] = {}
        self._audit: dict[str, list[AuditEntry]] = {}
        self._items: dict[_MatKey, dict[int, ItemResult]] = {}
        self._notes: dict[tuple[str, str, str, str], str] = {}
        self._seq = 0
        self._next_approval = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

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
            # the newest is the last written (the store's order, not a worker's clock)
            found = [
                m
                for m in self._mats.values()
                if m.pipeline == pipeline
                and m.asset == asset
                and m.partition == partition
                and m.state == "succeeded"
                and not m.invalidated
            ]
            return max(found, key=lambda m: self._mat_seq[m.id], default=None)

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

    def referenced_locations(self, io_manager: str, locations: Sequence[str]) -> set[str]:
        wanted = set(locations)
        with self._lock:
            found = {
                m.location
                for m in self._mats.values()
                if m.io_manager == io_manager and m.location in wanted
            }
            found |= {
                a.location
                for a in self._approvals.values()
                if a.io_manager == io_manager and a.location in wanted
            }
        return {loc for loc in found if loc is not None}

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
            if approval is None or approval.status != "pending":
                raise rules.approval_not_decidable(
                    approval_id,
                    None if approval is None else approval.status,
                    None if approval is None else approval.decided_by,
                )
            now = self.clock()
            if status != "expired" and _past(approval.expires_at, now):
                raise ApprovalError(
                    rules.wait_too_late(f"approval {approval_id}", approval.expires_at)
                )
            decided = replace(approval, status=status, decided_by=by, decided_at=now, reason=reason)
            self._approvals[approval_id] = decided
            kind, detail = rules.decision_audit(approval_id, status, by, reason)
            self._append(approval.run_id, kind, approval.asset, approval.partition, detail, now)
            return decided

    def due_approvals(self, now: datetime | None = None) -> list[Approval]:
        now = self.clock() if now is None else rules.require_utc(now, "now")
        with self._lock:
            return [
                a
                for a in self._approvals.values()
                if a.status == "pending" and a.expires_at is not None and a.expires_at <= now
            ]

    def get_gate(self, token_hash: str) -> Gate | None:
        with self._lock:
            return self._gates.get(token_hash)

    def find_gate(self, run_id: str, asset: str, partition: str) -> Gate | None:
        with self._lock:
            found = [
                g
                for g in self._gates.values()
                if (g.run_id, g.asset, g.partition) == (run_id, asset, partition)
            ]
            return max(found, key=lambda g: g.created_at) if found else None

    def consume_gate(
        self,
        token_hash: str,
        *,
        payload: Any,
        status: Literal["signaled", "expired"],
        claim: Continuation | None = None,
    ) -> Gate:
        payload = rules.json_copy(payload, "signal payload")
        with self._lock:
            gate = self._gates.get(token_hash)
            if gate is None:
                raise rules.gate_not_consumable(None)
            if gate.status != "pending":
                raise rules.gate_not_consumable(gate.status, gate.run_id, gate.asset)
            now = self.clock()
            if status == "signaled" and _past(gate.expires_at, now):
                raise SignalError(rules.wait_too_late("this signal gate", gate.expires_at))
            if claim is not None and not self._hold_wait(gate, claim, now):
                raise rules.gate_not_consumable("finished", gate.run_id, gate.asset)
            used = replace(gate, status=status, payload=payload, signaled_at=now)
            self._gates[token_hash] = used
            self._append(gate.run_id, f"gate_{status}", gate.asset, gate.partition, {}, now)
            return used

    def due_gates(self, now: datetime | None = None) -> list[Gate]:
        now = self.clock() if now is None else rules.require_utc(now, "now")
        with self._lock:
            return [
                g
                for g in self._gates.values()
                if g.status == "pending" and g.expires_at is not None and g.expires_at <= now
            ]

    def _cancel_waits(self, run_id: str) -> None:
        """A cancelled run's pending approvals and gates end ``cancelled``: an old token or
        approval id cannot finish a step of the cancelled or resumed run."""
        for aid, approval in list(self._approvals.items()):
            if approval.run_id == run_id and approval.status == "pending":
                self._approvals[aid] = replace(approval, status="cancelled")
        for th, gate in list(self._gates.items()):
            if gate.run_id == run_id and gate.status == "pending":
                self._gates[th] = replace(gate, status="cancelled")

    def _hold_wait(self, gate: Gate, claim: Continuation, now: datetime) -> bool:
        """Hold the gate's step for its resolver (the store's step half implements it)."""
        raise NotImplementedError

    # --- routing -----------------------------------------------------------------------
    def record_route_decision(self, run_id: str, router: str, partition: str, branch: str) -> str:
        with self._lock:
            key = (run_id, router, partition)
            if key not in self._routes:
                self._routes[key] = (branch, self.clock())
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
            self._ticks[(name, tick)] = self.clock()
            return True

    def prune_ticks(self, older_than: datetime, *, prefix: str) -> int:
        older_than = rules.require_utc(older_than, "older_than")
        with self._lock:
            old = [
                k for k, at in self._ticks.items() if k[0].startswith(prefix) and at < older_than
            ]
            for key in old:
                del self._ticks[key]
            return len(old)

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
            self._append(run_id, kind, asset, partition, copied, self.clock())

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

    # --- step notes ------------------------------------------------------------------------
    def add_step_note(self, run_id: str, asset: str, partition: str, kind: str, value: str) -> str:
        rules.check_note(kind, value)
        with self._lock:
            return self._notes.setdefault((run_id, asset, partition, kind), value)

    def get_step_note(self, run_id: str, asset: str, partition: str, kind: str) -> str | None:
        with self._lock:
            return self._notes.get((run_id, asset, partition, kind))

    # --- internals (called with the lock held) ------------------------------------------
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

    def _upsert_materialization(self, mat: MaterializationRecord) -> str:
        """The last write wins, but the record keeps the id it was first written with (a
        step finished again: lineage and join records keep naming it); returns that id."""
        key = (mat.run_id, mat.asset, mat.partition)
        old_id = self._mat_ids.get(key)
        if old_id is not None:
            old = self._mats.pop(old_id)
            for up in old.upstream:
                self._downstream[up].remove(old_id)
            del self._mat_seq[old_id]  # a rewrite is the newest record again
            mat = replace(mat, id=old_id)
        self._mat_seq[mat.id] = self._next()
        self._mats[mat.id] = mat
        self._mat_ids[key] = mat.id
        for up in mat.upstream:
            self._downstream.setdefault(up, []).append(mat.id)
        return mat.id


def _past(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now
