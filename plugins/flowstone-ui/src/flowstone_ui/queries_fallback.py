"""``StoreUIQueries``: the UI's reads through the ``RunStore`` protocol alone.

For the memory store (and any store without SQL reads of its own): each call reads at most
:data:`SCAN_LIMIT` records through the protocol and pages them in Python. That is bounded,
but it only sees the newest :data:`SCAN_LIMIT` runs; the SQLite and Postgres stores have
their own implementations that page over everything.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowstone.protocols import RunStore
from flowstone.records import (
    Approval,
    AuditEntry,
    Gate,
    ItemResult,
    MaterializationRecord,
    RunRecord,
    StepRecord,
)
from flowstone_ui.queries import (
    ACTIVE_STEP_STATES,
    MAX_PAGE,
    RunFilter,
    clamp,
    decode_cursor,
    encode_cursor,
    to_us,
)

__all__ = ["SCAN_LIMIT", "StoreUIQueries"]

SCAN_LIMIT = 5000
"""The most records one fallback call reads from the store."""


class StoreUIQueries:
    """:class:`~flowstone_ui.queries.UIQueries` over any ``RunStore`` (see the module doc)."""

    __slots__ = ("_store",)

    def __init__(self, store: RunStore) -> None:
        self._store = store

    def runs(self, query: RunFilter) -> tuple[list[RunRecord], str | None]:
        limit = clamp(query.limit)
        after = query.run_key()
        found: list[RunRecord] = []
        for pipeline in query.pipelines:
            for run in self._store.list_runs(
                pipeline=pipeline, status=query.status, limit=SCAN_LIMIT  # type: ignore[arg-type]
            ):
                if query.since is not None and run.created_at < query.since:
                    continue
                if query.until is not None and run.created_at >= query.until:
                    continue
                if after is not None and (run.created_at, run.run_id) >= after:
                    continue
                if query.asset is not None and not self._plans(run.run_id, query.asset):
                    continue
                found.append(run)
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        page = found[:limit]
        more = len(found) > limit
        cursor = encode_cursor(to_us(page[-1].created_at), page[-1].run_id) if more else None
        return page, cursor

    def _plans(self, run_id: str, asset: str) -> bool:
        return any(s.asset == asset for s in self._store.list_steps(run_id))

    def latest_materializations(
        self, pipeline: str, assets: Sequence[str]
    ) -> dict[str, MaterializationRecord]:
        out: dict[str, MaterializationRecord] = {}
        for asset in assets:
            recs = self._store.list_materializations(pipeline, asset=asset, limit=1)
            if recs:
                out[asset] = recs[0]
        return out

    def active_steps(
        self, pipeline: str, *, asset: str | None = None,
        partitions: Sequence[str] | None = None, limit: int = MAX_PAGE,
    ) -> list[StepRecord]:
        wanted = None if partitions is None else set(partitions)
        out: list[StepRecord] = []
        for status in ("running", "waiting"):
            for run in self._store.list_runs(pipeline=pipeline, status=status, limit=MAX_PAGE):
                for step in self._store.list_steps(run.run_id):
                    if step.state not in ACTIVE_STEP_STATES:
                        continue
                    if asset is not None and step.asset != asset:
                        continue
                    if wanted is not None and step.partition not in wanted:
                        continue
                    out.append(step)
                    if len(out) >= clamp(limit):
                        return out
        return out

    def partition_states(
        self, pipeline: str, asset: str, partitions: Sequence[str]
    ) -> dict[str, str]:
        wanted = set(partitions)
        out: dict[str, str] = {}
        for rec in self._store.list_materializations(pipeline, asset=asset, limit=SCAN_LIMIT):
            if rec.partition in wanted and rec.partition not in out and not rec.invalidated:
                out[rec.partition] = rec.state
        return out

    def known_partitions(
        self, pipeline: str, asset: str, *, after: str | None, limit: int
    ) -> list[str]:
        recs = self._store.list_materializations(pipeline, asset=asset, limit=SCAN_LIMIT)
        keys = sorted({r.partition for r in recs if after is None or r.partition > after})
        return keys[: clamp(limit)]

    def materializations(
        self, pipeline: str, asset: str, *, cursor: str | None, limit: int
    ) -> tuple[list[MaterializationRecord], str | None]:
        start = 0
        if cursor is not None:
            (start,) = decode_cursor(cursor, 1, what="materializations cursor")
            if not isinstance(start, int) or start < 0:
                start = 0
        n = clamp(limit)
        recs = self._store.list_materializations(
            pipeline, asset=asset, limit=min(SCAN_LIMIT, start + n + 1)
        )
        page = recs[start : start + n]
        more = len(recs) > start + n
        return page, encode_cursor(start + n) if more else None

    def pending_approvals(
        self, pipelines: Sequence[str], *, after: int | None, limit: int
    ) -> list[Approval]:
        found = [
            a
            for p in pipelines
            for a in self._store.list_approvals(pipeline=p, status="pending")
            if after is None or a.id > after
        ]
        found.sort(key=lambda a: a.id)
        return found[: clamp(limit)]

    def pending_gates(
        self, pipelines: Sequence[str], *, cursor: str | None, limit: int
    ) -> tuple[list[Gate], str | None]:
        # the protocol lists gates only by due time: the pending ones due at the far end
        # of time are all pending gates with an expiry; gates without one are not listed
        from datetime import UTC, datetime

        names = set(pipelines)
        gates = [
            g for g in self._store.due_gates(datetime.max.replace(tzinfo=UTC))
            if g.pipeline in names and g.metadata.get("kind") != "deferred"
        ]
        gates.sort(key=lambda g: (g.created_at, g.token_hash))
        if cursor is not None:
            at, token_hash = decode_cursor(cursor, 2, what="gates cursor")
            gates = [g for g in gates if (to_us(g.created_at), g.token_hash) > (at, token_hash)]
        n = clamp(limit)
        page = gates[:n]
        more = len(gates) > n
        return page, (
            encode_cursor(to_us(page[-1].created_at), page[-1].token_hash) if more else None
        )

    def audit(self, run_id: str, *, after: int | None, limit: int) -> list[AuditEntry]:
        entries = [e for e in self._store.list_audit(run_id) if after is None or e.id > after]
        return entries[: clamp(limit)]

    def item_results(
        self, run_id: str, asset: str, partition: str, *, state: str | None,
        after: int | None, limit: int,
    ) -> list[ItemResult]:
        items = [
            i for i in self._store.load_item_results(run_id, asset, partition)
            if (state is None or i.state == state) and (after is None or i.index > after)
        ]
        return items[: clamp(limit)]

    def item_counts(self, run_id: str, asset: str, partition: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self._store.load_item_results(run_id, asset, partition):
            counts[item.state] = counts.get(item.state, 0) + 1
        return counts
