"""The durable join record: what a parallel join saw, written once per (run, asset, partition).

A join that ran (the join function was called with the branches) is recorded under
:data:`METADATA_KEY` in the metadata of the join's own materialization, which
``finish_step`` writes once, in the transaction that records the joined value: a join
executed twice (its worker died mid-join) cannot leave two records, or a record without
a value. A join that failed because a required branch failed has no value; its record is
a run store step note of kind :data:`JOIN_NOTE` on the join step
(:class:`~flowstone.protocols.StepNotes`: first write wins), so the first failure's
record stands.
Every join step attempted more than once gets a ``parallel.join_repeated`` audit entry.
Both work on every :class:`~flowstone.protocols.RunStore` (memory, SQLite, Postgres).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from flowstone.errors import StorageError
from flowstone.protocols import AuditLog, RunScheduling, StepNotes

__all__ = [
    "JOIN_NOTE",
    "METADATA_KEY",
    "REPEATED_KIND",
    "BranchRecord",
    "JoinRecord",
    "join_record",
]

REPEATED_KIND = "parallel.join_repeated"
"""Audit kind appended when a join step runs again (attempt 2 or later)."""

METADATA_KEY = "flowstone.parallel.join"
"""The materialization metadata entry holding the record of a join that ran."""

JOIN_NOTE = "flowstone.parallel.join"
"""The kind of the step note holding the record of a join that failed."""


@dataclass(frozen=True, slots=True)
class BranchRecord:
    """How one branch ended, as the join saw it.

    Attributes:
        branch: the branch name.
        final: the branch's final asset.
        state: ``succeeded``, ``failed``, ``skipped`` or ``absent`` (no partition applied).
        materialization_ids: the final's materialization records in this run (failed ones
            included), one per final partition the join read.
        detail: the failure or skip reason, ``""`` on success.
    """

    branch: str
    final: str
    state: Literal["succeeded", "skipped", "failed", "absent"]
    materialization_ids: tuple[str, ...]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class JoinRecord:
    """One parallel join, recorded exactly once.

    Attributes:
        run_id / asset / partition: the join step.
        mode: the parallel's failure mode.
        outcome: ``"joined"`` (the join function was called with the branches) or
            ``"failed"`` (a required branch failed, so the join step failed).
        error: why it failed, ``""`` when joined.
        branches: one :class:`BranchRecord` per branch, in declaration order.
        recorded_at: when the recorded execution joined (UTC).
        repeats: how many times the join step was attempted again (0 normally).
    """

    run_id: str
    asset: str
    partition: str
    mode: str
    outcome: Literal["joined", "failed"]
    error: str
    branches: tuple[BranchRecord, ...]
    recorded_at: datetime
    repeats: int = 0

    def branch(self, name: str) -> BranchRecord:
        """The record of branch ``name``; ``KeyError`` if the parallel has no such branch."""
        for b in self.branches:
            if b.branch == name:
                return b
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``repeats`` is derived from the audit log, not stored)."""
        return {
            "v": 1,
            "mode": self.mode,
            "outcome": self.outcome,
            "error": self.error,
            "recorded_at": self.recorded_at.isoformat(),
            "branches": [
                {
                    "branch": b.branch,
                    "final": b.final,
                    "state": b.state,
                    "materialization_ids": list(b.materialization_ids),
                    "detail": b.detail,
                }
                for b in self.branches
            ],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as compact JSON (the step note form)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


class JoinRecordSource(StepNotes, RunScheduling, AuditLog, Protocol):
    """The roles of a run store :func:`join_record` reads: step notes (a failed join), the
    join step's materialization (a join that ran) and the audit log (repeats)."""


def _parse(
    run_id: str, asset: str, partition: str, raw: str | Mapping[str, Any], repeats: int
) -> JoinRecord:
    try:
        data: Mapping[str, Any] = json.loads(raw) if isinstance(raw, str) else raw
        return JoinRecord(
            run_id=run_id,
            asset=asset,
            partition=partition,
            mode=str(data["mode"]),
            outcome=data["outcome"],
            error=str(data["error"]),
            branches=tuple(
                BranchRecord(
                    branch=str(b["branch"]),
                    final=str(b["final"]),
                    state=b["state"],
                    materialization_ids=tuple(str(m) for m in b["materialization_ids"]),
                    detail=str(b["detail"]),
                )
                for b in data["branches"]
            ),
            recorded_at=datetime.fromisoformat(data["recorded_at"]),
            repeats=repeats,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(
            f"the join record of {asset!r} partition {partition!r} in run {run_id!r} is not a "
            f"valid flowstone-parallel record ({type(exc).__name__}: {exc}); it was written by "
            f"something else. Fix: do not write step notes of kind {JOIN_NOTE!r} or "
            f"materialization metadata under {METADATA_KEY!r}"
        ) from exc


def join_record(
    store: JoinRecordSource, run_id: str, asset: str, partition: str = ""
) -> JoinRecord | None:
    """Read the join record of a parallel ``asset`` in ``run_id``, or None if it has not joined.

    Args:
        store: the pipeline's run store (``pipeline.store``).
        run_id: the run.
        asset: the parallel asset's name.
        partition: the *encoded* partition (``""`` when not partitioned).

    Example:
        >>> record = join_record(pipeline.store, result.run_id, "briefing")
        >>> record.outcome, [b.state for b in record.branches]
        ('joined', ['succeeded', 'failed', 'succeeded'])
    """
    raw: str | Mapping[str, Any] | None = store.get_step_note(run_id, asset, partition, JOIN_NOTE)
    if raw is None:
        for _, mat in store.get_step_results(run_id, [(asset, partition)]):
            if mat is not None and mat.run_id == run_id:
                raw = mat.metadata.get(METADATA_KEY)
    if raw is None:
        return None
    repeats = sum(
        1
        for e in store.list_audit(run_id)
        if e.kind == REPEATED_KIND and e.asset == asset and (e.partition or "") == partition
    )
    return _parse(run_id, asset, partition, raw, repeats)
