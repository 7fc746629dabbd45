"""``RunResult``: what ``pipeline.run`` (and approve/reject/signal) hand back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flowstone.errors import AssetFailedError, ExecutionError, RunNotFoundError
from flowstone.partitions import decode_partition
from flowstone.protocols import BulkRunReads
from flowstone.records import Approval, MaterializationRecord, RunRecord, StepRecord
from flowstone.run_outcome import PartialFailure, partial_failures, target_steps, tolerated

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline
    from flowstone.protocols import RunStore

__all__ = ["POLL_WINDOW", "RunResult", "wait_for_run", "wait_for_runs"]

_SETTLED = frozenset({"waiting", "succeeded", "failed", "cancelled"})


def wait_for_run(
    store: RunStore,
    run_id: str,
    *,
    timeout: float | None,
    deferred_assets: frozenset[str] = frozenset(),
) -> RunRecord:
    """Poll the store until the run leaves ``running`` (or ``timeout`` seconds pass).

    A run ``waiting`` only on steps of ``deferred_assets`` (scatter steps whose items run
    on workers) is still making progress by itself, so it is not settled."""
    return wait_for_runs(store, [run_id], timeout=timeout, deferred_assets=deferred_assets)[0]


def wait_for_runs(
    store: RunStore,
    run_ids: Sequence[str],
    *,
    timeout: float | None,
    deferred_assets: frozenset[str] = frozenset(),
    bulk: BulkRunReads | None = None,
) -> list[RunRecord]:
    """Poll the store until every run of ``run_ids`` settles (or ``timeout`` seconds pass);
    return their records in the order given.

    Each poll reads the first :data:`POLL_WINDOW` runs not yet settled, with one
    ``get_runs`` when the store offers it (``bulk``, a
    :class:`~flowstone.protocols.BulkRunReads`; by default the store itself if it is one),
    one ``get_run`` each otherwise, so waiting for
    a thousand runs costs a read every few milliseconds, not a thousand. The delay between
    polls is 10 ms, or a twentieth of the time waited so far once that is longer, at most
    250 ms: a run is seen settled at most 5% (and 250 ms) after it did, at the cost of
    about 90 reads over the first five seconds and four a second after that (as many as
    a geometric backoff to 250 ms makes, which saw a run settled up to 50% late). After
    something settled, the next read comes at once (the whole window settled) or after
    10 ms. Runs settle in any order; an unknown id raises ``RunNotFoundError`` naming it.
    """
    if bulk is None and isinstance(store, BulkRunReads):
        bulk = store
    order = list(dict.fromkeys(run_ids))
    latest: dict[str, RunRecord] = {}
    pending = order
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    delay = _FIRST_DELAY
    while pending:
        window = pending[:POLL_WINDOW]
        found = _read_runs(store, bulk, window)
        latest.update(found)
        unsettled = [rid for rid in window if not _settled(store, found[rid], deferred_assets)]
        pending = unsettled + pending[POLL_WINDOW:]
        if len(unsettled) < len(window):  # progress: look again soon
            delay = _FIRST_DELAY
            if not unsettled:
                continue  # the whole window settled: read the next one at once
        if deadline is not None and time.monotonic() >= deadline:
            for start in range(len(unsettled), len(pending), POLL_WINDOW):  # never read yet
                latest.update(_read_runs(store, bulk, pending[start:start + POLL_WINDOW]))
            break
        time.sleep(delay)
        delay = min(max(_FIRST_DELAY, (time.monotonic() - started) * _DELAY_SHARE), _MAX_DELAY)
    return [latest[rid] for rid in order]


POLL_WINDOW = 16
_FIRST_DELAY = 0.01
_MAX_DELAY = 0.25
_DELAY_SHARE = 0.05  # of the time waited so far: how late a settled run may be seen


def _read_runs(
    store: RunStore, bulk: BulkRunReads | None, run_ids: Sequence[str]
) -> dict[str, RunRecord]:
    if bulk is not None:
        found = {r.run_id: r for r in bulk.get_runs(run_ids)}
    else:
        found = {rid: r for rid in run_ids if (r := store.get_run(rid)) is not None}
    for rid in run_ids:
        if rid not in found:
            raise RunNotFoundError(f"no run {rid!r} in the run store {store.name!r}")
    return found


def _settled(store: RunStore, run: RunRecord, deferred_assets: frozenset[str]) -> bool:
    if run.status not in _SETTLED:
        return False
    if run.status != "waiting" or not deferred_assets:
        return True
    waiting = [s.asset for s in store.list_steps(run.run_id) if s.state == "waiting"]
    return not all(asset in deferred_assets for asset in waiting)


class RunResult:
    """The state of one run.

    Attributes:
        run_id, status, targets, partition (typed), error.
        materializations: records of this run plus the reused ones its targets read.
        partial_failures: what failed although the run succeeded (an optional parallel
            branch, scatter items under the threshold); see :mod:`flowstone.run_outcome`.
    """

    __slots__ = ("_cache", "_pipeline", "_steps", "run")

    def __init__(self, pipeline: Pipeline, run: RunRecord) -> None:
        self._pipeline = pipeline
        self.run = run
        self._steps: list[StepRecord] | None = None
        self._cache: dict[str, Any] = {}

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def status(self) -> str:
        """The stored status, except that a run stored ``failed`` whose targets all
        succeeded (its failures were tolerated) is ``succeeded``: see
        :attr:`partial_failures`."""
        if self.run.status == "failed" and tolerated(self.run, self.steps):
            return "succeeded"
        return self.run.status

    @property
    def stored_status(self) -> str:
        """The status as the run store holds it."""
        return self.run.status

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def partial_failures(self) -> tuple[PartialFailure, ...]:
        """The tolerated failures of a succeeded run (empty when there were none or the run
        did not succeed): failed optional branches, scatters with failed items."""
        if "partial" not in self._cache:
            self._cache["partial"] = partial_failures(self._pipeline, self.run, self.steps)
        found: tuple[PartialFailure, ...] = self._cache["partial"]
        return found

    @property
    def partial(self) -> bool:
        """Whether the run succeeded with tolerated failures."""
        return bool(self.partial_failures)

    @property
    def targets(self) -> tuple[str, ...]:
        return self.run.targets

    @property
    def partition(self) -> Any:
        return decode_partition(self.run.partition)

    @property
    def steps(self) -> list[StepRecord]:
        if self._steps is None:
            self._steps = self._pipeline.store.list_steps(self.run_id)
        return self._steps

    @property
    def error(self) -> str | None:
        if self.run.error:
            return self.run.error
        if self.status == "succeeded":  # tolerated failures: see partial_failures
            return None
        failed = [s for s in self.steps if s.state == "failed"]
        if failed:
            return "; ".join(f"asset {s.asset!r} failed: {s.error}" for s in failed)
        blocked = [s for s in self.steps if s.state == "upstream_failed"]
        if blocked:
            return f"asset {blocked[0].asset!r}: {blocked[0].error}"
        return None

    @property
    def materializations(self) -> list[MaterializationRecord]:
        if "mats" not in self._cache:
            store = self._pipeline.store
            ids = [s.materialization_id for s in self.steps if s.materialization_id]
            mats = [m for m in (store.get_materialization(i) for i in ids) if m is not None]
            self._cache["mats"] = mats
        return list(self._cache["mats"])

    def approvals(self) -> list[Approval]:
        """Pending approvals this run is waiting for."""
        store = self._pipeline.store
        out = []
        for s in self.steps:
            if s.state == "waiting":
                a = store.find_approval(self.run_id, s.asset, s.partition)
                if a is not None and a.status == "pending":
                    out.append(a)
        return out

    @property
    def value(self) -> Any:
        """The target's value (a dict by asset name for several targets).

        Raises:
            ExecutionError: the run did not succeed (the message says why: failed asset,
                pending approval ids, ...).
        """
        if "value" in self._cache:
            return self._cache["value"]
        by_asset = target_steps(self.run, self.steps)
        # a tolerated failure (a partial-mode branch) fails the run but not the target
        if self.status in ("running", "waiting") or any(
            by_asset.get(t) is None or by_asset[t].state != "succeeded" for t in self.targets
        ):
            raise self._not_succeeded()
        store = self._pipeline.store
        values: dict[str, Any] = {}
        for t in self.targets:
            mid = by_asset[t].materialization_id
            mat = store.get_materialization(mid) if mid else None
            values[t] = self._pipeline.load_materialization(mat) if mat is not None else None
        result = values[self.targets[0]] if len(self.targets) == 1 else values
        self._cache["value"] = result
        return result

    def _not_succeeded(self) -> ExecutionError:
        if self.status == "waiting":
            pending = self.approvals()
            what = (
                "approvals " + ", ".join(str(a.id) for a in pending) if pending else "a signal gate"
            )
            return ExecutionError(
                f"run {self.run_id} is waiting for {what}; approve/signal it to continue"
            )
        if self.status == "failed":
            failed = next((s for s in self.steps if s.state == "failed"), None)
            return AssetFailedError(
                f"run {self.run_id} failed: {self.error}", asset=failed.asset if failed else None
            )
        return ExecutionError(f"run {self.run_id} is {self.status}: {self.error or 'no value'}")

    def raise_for_status(self) -> RunResult:
        """Raise unless the run succeeded; returns self for chaining."""
        if self.status != "succeeded":
            raise self._not_succeeded()
        return self

    def to_dict(self, *, include_value: bool = True) -> dict[str, Any]:
        """A JSON-friendly summary (what ``flowstone run --json`` prints)."""
        run_mats = {m.id: m for m in self.materializations}
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": self.run.pipeline,
            "status": self.status,
            "partition": self.run.partition or None,
            "targets": list(self.targets),
            "error": self.error,
            "value": None,
            "materializations": [
                {
                    "id": m.id,
                    "asset": m.asset,
                    "partition": m.partition or None,
                    "state": m.state,
                    "reused": m.run_id != self.run_id,
                    "attempt": m.attempt,
                    "error": m.error,
                    "upstream": list(m.upstream),
                }
                for m in run_mats.values()
            ],
        }
        if include_value:
            try:
                out["value"] = self.value
            except ExecutionError:
                out["value"] = None
        out["partial_failures"] = [f.to_dict() for f in self.partial_failures]
        if self.status == "waiting":
            out["approvals"] = [
                {"id": a.id, "asset": a.asset, "message": a.message} for a in self.approvals()
            ]
        return out

    def __repr__(self) -> str:
        return f"RunResult(run_id={self.run_id!r}, status={self.status!r})"
