"""StepRunner: claim one step, run its asset, record the outcome, return what became ready.

Every executor uses it: the in-process executor from a thread pool, the Celery executor
from a task. One step = one claim transaction, the asset call, the value stored through
the IO manager, then one ``finish_step`` transaction that records materialization and
lineage and schedules dependents (value first, metadata second: a crash in between
leaves an orphan value, never a record without a value).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import threading
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowstone.asset import AssetDef
from flowstone.context import Context
from flowstone.engine.inputs import DepOutcome, resolve_inputs
from flowstone.engine.invoke import bind_arguments, call_with_timeout
from flowstone.engine.leases import LeaseKeeper
from flowstone.engine.prefetch import PrefetchCache
from flowstone.engine.requests import ParallelRequest, ScatterRequest
from flowstone.engine.scatter_retry import RETRY_TAG
from flowstone.engine.timeouts import mark_branch_started
from flowstone.errors import EncodingError, ExecutionError
from flowstone.events import Event
from flowstone.outcomes import Retry, SignalGate, Skip, WaitForApproval, to_seconds
from flowstone.partitions import decode_partition
from flowstone.protocols import StorageKey
from flowstone.records import (
    Approval,
    Continuation,
    Gate,
    MaterializationRecord,
    StagedValue,
    StepOutcome,
    StepRecord,
)
from flowstone.scatter import Batch, Deferred

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["StepRunner", "hash_token", "split_claimed"]

log = logging.getLogger("flowstone.engine")
MAX_SOFT_RETRIES = 1000
_CACHED_MATERIALIZATIONS = 4096


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def split_claimed(
    ready: tuple[StepRecord, ...],
) -> tuple[StepRecord | None, tuple[StepRecord, ...]]:
    """``(the continuation claimed for the caller, the other ready steps)`` of what
    :meth:`StepRunner.run_claimed` returned with ``claim_next`` (the claimed one is the
    step in state ``running``)."""
    claimed = next((s for s in ready if s.state == "running"), None)
    if claimed is None:
        return None, ready
    return claimed, tuple(s for s in ready if s is not claimed)


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:1997] + "..."


@dataclasses.dataclass(frozen=True, slots=True)
class _RetryLater:
    delay: float
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Deferring:
    """A step that waits on a coordinator; ``start`` runs once the wait is recorded."""

    outcome: StepOutcome
    start: Callable[[], None] | None


class StepRunner:
    """Runs steps of one pipeline. Thread-safe; one per pipeline per process."""

    __slots__ = (
        "_leases", "_mats", "_mats_lock", "_owner_prefix", "_p", "_prefetch_from", "_staging",
        "prefetched",
    )  # fmt: skip

    def __init__(self, pipeline: Pipeline) -> None:
        self._p = pipeline
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self._leases = LeaseKeeper(pipeline.store)
        # succeeded materializations this process recorded: immutable once committed, and
        # read again by each dependent (saves two store queries per dependency edge)
        self._mats: OrderedDict[object, MaterializationRecord] = OrderedDict()
        self._mats_lock = threading.Lock()
        self._staging: dict[str, bool] = {}  # io manager name -> values ride on finish_step
        self._prefetch_from: list[tuple[str, object]] | None = None  # prefetch_sources()
        # values a claimed continuation reads that are already here (engine/prefetch.py)
        self.prefetched = PrefetchCache()

    def succeeded(self, run_id: str, asset: str, partition: str) -> MaterializationRecord | None:
        """The materialization of a step this process saw succeed (terminal: it cannot
        change), or None when the store must be asked."""
        with self._mats_lock:
            return self._mats.get((run_id, asset, partition))

    def _remember(self, mat: MaterializationRecord) -> None:
        with self._mats_lock:
            self._mats[mat.id] = mat
            self._mats[(mat.run_id, mat.asset, mat.partition)] = mat
            while len(self._mats) > 2 * _CACHED_MATERIALIZATIONS:
                self._mats.popitem(last=False)

    def owner(self) -> str:
        return f"{self._owner_prefix}:{threading.get_ident()}"

    def close(self) -> None:
        self._leases.close()

    # ------------------------------------------------------------------------------
    def run_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        owner: str | None = None,
        lease_seconds: float | None = None,
        claim_next: bool = False,
    ) -> tuple[StepRecord, ...]:
        """Claim and execute one step; return the steps that became ready.

        Returns ``()`` when the step is not claimable (a duplicate delivery, a cancelled
        run). Asset failures are recorded, never raised; only infrastructure errors (the
        store is unreachable) propagate, so a queue can redeliver the message.
        A step the retry policy sends back is returned itself with ``not_before`` set.
        With ``claim_next`` see :meth:`run_claimed`.
        """
        p = self._p
        owner = owner or self.owner()
        lease = lease_seconds or p.lease_seconds
        step = p.store.claim_step(run_id, asset, partition, owner=owner, lease_seconds=lease)
        if step is None:
            return ()
        return self.run_claimed(step, lease_seconds=lease, claim_next=claim_next)

    def run_claimed(
        self, step: StepRecord, *, lease_seconds: float | None = None, claim_next: bool = False
    ) -> tuple[StepRecord, ...]:
        """Execute ``step``, already claimed for ``step.owner``; return what became ready.

        With ``claim_next`` the step's ``finish_step`` also claims the first dependent
        that became ready for the same owner (a :class:`~flowstone.records.Continuation`):
        it comes back among the returned steps in state ``running``, for the caller to
        run next with this method, without a claim round trip.
        """
        p = self._p
        run_id, asset, partition = step.run_id, step.asset, step.partition
        owner = step.owner or self.owner()
        lease = lease_seconds or p.lease_seconds
        then = Continuation(owner, lease, self.prefetch_sources()) if claim_next else None
        a = p.dag[asset]
        if asset in p.branch_index:
            mark_branch_started(p, run_id, asset)
        started_at = _now()
        p.emit(Event("asset.started", p.name, run_id, asset, partition, {"attempt": step.attempt}))
        with self._leases.keep(run_id, asset, partition, owner, lease):
            result = self._execute(step, a, owner, started_at)
        if isinstance(result, _Deferring):
            return self.complete(
                run_id,
                asset,
                partition,
                result.outcome,
                started_at=started_at,
                on_applied=result.start,
            )
        if isinstance(result, _RetryLater):
            not_before = _now() + timedelta(seconds=result.delay)
            if not p.store.retry_step(
                run_id, asset, partition, not_before=not_before, error=result.error
            ):
                return ()
            p.emit(
                Event(
                    "asset.retrying",
                    p.name,
                    run_id,
                    asset,
                    partition,
                    {"attempt": step.attempt, "delay_s": result.delay, "error": result.error},
                )
            )
            return (dataclasses.replace(step, state="ready", not_before=not_before),)
        return self.complete(run_id, asset, partition, result, started_at=started_at, then=then)

    def complete(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        *,
        started_at: datetime | None = None,
        on_applied: Callable[[], None] | None = None,
        then: Continuation | None = None,
    ) -> tuple[StepRecord, ...]:
        """Record ``outcome`` for a step (also used to resume waiting steps).

        ``on_applied`` runs only if this call changed the step (not for a duplicate).
        With ``then``, a dependent claimed for it is returned too (state ``running``)."""
        p = self._p
        transition = p.store.finish_step(run_id, asset, partition, outcome, then=then)
        if not transition.applied:
            return ()
        if outcome.materialization is not None and outcome.state == "succeeded":
            self._remember(outcome.materialization)
        if on_applied is not None:
            on_applied()
        data: dict[str, Any] = {}
        if started_at is not None:
            data["duration_s"] = round((_now() - started_at).total_seconds(), 6)
        if outcome.error:
            data["error"] = outcome.error
        if outcome.state == "waiting":
            kind = "gate.opened" if outcome.gate else "approval.requested"
            p.emit(Event(kind, p.name, run_id, asset, partition, data))
        else:
            kind = {"succeeded": "asset.succeeded", "skipped": "asset.skipped"}.get(
                outcome.state, "asset.failed"
            )
            if outcome.materialization is not None:
                data["materialization_id"] = outcome.materialization.id
            p.emit(Event(kind, p.name, run_id, asset, partition, data))
        if transition.run_status in ("succeeded", "failed", "cancelled"):
            p.emit(Event("run.finished", p.name, run_id, data={"status": transition.run_status}))
        if transition.claimed is not None:
            # what the continuation reads first, if the store sent it along: succeeded
            # records are terminal, so they can stand in for the store (see succeeded());
            # so can the values: this step's own, and those the store read with them
            for dep, mat in transition.claimed_inputs or ():
                if dep.state == "succeeded" and mat is not None and mat.state == "succeeded":
                    self._remember(mat)
            self.prefetched.put((v.location, v.encoded) for v in outcome.staged)
            self.prefetched.put(transition.claimed_values or {})
            return (*transition.ready, transition.claimed)
        return transition.ready

    # ------------------------------------------------------------------------------
    def _execute(
        self, step: StepRecord, a: AssetDef, owner: str, started_at: datetime
    ) -> StepOutcome | _RetryLater | _Deferring:
        p = self._p
        run_id, enc = step.run_id, step.partition
        key = decode_partition(enc)
        inputs = resolve_inputs(p, run_id, a, key)
        values: dict[str, Any] = {}
        branch_outcomes: dict[str, DepOutcome] = {}
        for dep, out in inputs.outcomes.items():
            if dep == a.routed_from:
                if out.state == "succeeded" and out.value != a.name:
                    return self._skip(
                        a,
                        step,
                        started_at,
                        f"not selected by router {dep!r} (it chose {out.value!r})",
                    )
                if out.state in ("skipped", "absent"):
                    return self._skip(a, step, started_at, f"router {dep!r} was skipped")
                if out.state == "failed":
                    return StepOutcome(
                        "upstream_failed", error=f"router {dep!r} failed: {out.detail}"
                    )
            branch = a.parallel.branch_of(dep) if a.parallel is not None else None
            if branch is not None:
                branch_outcomes[branch] = out
                if dep not in a.deps:
                    continue
            if dep not in a.deps:
                continue
            if out.state == "succeeded":
                values[dep] = out.value
            elif out.state in ("skipped", "absent"):
                if dep not in a.optional_deps and branch is None:
                    return self._skip(
                        a, step, started_at, f"upstream {dep!r} skipped: {out.detail}"
                    )
            elif branch is None:
                return StepOutcome(
                    "upstream_failed", error=f"upstream {dep!r} failed: {out.detail}"
                )

        recorded: dict[str, Any] = {}  # coordinator metadata for the materialization
        try:
            # inside the try: a resource that fails to set up fails this asset (recorded,
            # retried by its policy) instead of escaping and leaving the step claimed
            context = self._context(a, run_id, enc, key, step.attempt)
            value = self._call(a, step, context, values, branch_outcomes, owner, key, recorded)
            if isinstance(value, Deferred):
                gate = Gate(
                    token_hash=hash_token(value.token),
                    pipeline=p.name,
                    run_id=run_id,
                    asset=a.name,
                    partition=enc,
                    status="pending",
                    created_at=_now(),
                    metadata={"kind": "deferred"},
                )
                return _Deferring(StepOutcome("waiting", gate=gate), value.start)
            if isinstance(value, Retry):
                if step.attempt >= MAX_SOFT_RETRIES:
                    raise ExecutionError(
                        f"asset {a.name!r} asked to Retry {MAX_SOFT_RETRIES} times; giving up"
                    )
                return _RetryLater(value.seconds, value.reason or "Retry requested")
            return self._outcome(
                a, step, context, value, inputs.upstream_ids, started_at, recorded
            )
        except _UpstreamFailed as exc:
            return StepOutcome("upstream_failed", error=str(exc))
        except Exception as exc:
            error = describe_error(exc)
            if not isinstance(exc, EncodingError) and a.retry.should_retry(step.attempt, exc):
                return _RetryLater(a.retry.delay(step.attempt), error)
            log.warning("asset %s [%s] failed on attempt %d: %s", a.name, enc, step.attempt, error)
            tb = "".join(traceback.format_exception(exc, limit=-8))[-4000:]
            mat = self._record(
                a,
                step,
                "failed",
                started_at,
                error=error,
                upstream=inputs.upstream_ids,
                metadata={**recorded, "traceback": tb},
            )
            return StepOutcome("failed", materialization=mat, error=error)

    def _call(
        self,
        a: AssetDef,
        step: StepRecord,
        context: Context,
        values: dict[str, Any],
        branch_outcomes: dict[str, DepOutcome],
        owner: str,
        key: Any,
        recorded: dict[str, Any],
    ) -> Any:
        p = self._p
        if a.is_router:
            decided = p.store.get_route_decision(step.run_id, a.name, step.partition)
            if decided is not None:  # replayed, never re-evaluated
                return decided
        if a.scatter is not None:
            # one read of the run record: a retry_failed_items run names the earlier run
            run = p.store.get_run(step.run_id)
            previous = run.tags.get(RETRY_TAG) if run is not None else None
            request = ScatterRequest(
                pipeline=p,
                asset=a,
                run_id=step.run_id,
                partition=step.partition,
                key=key,
                deps=values,
                attempt=step.attempt,
                owner=owner,
                make_context=lambda item, batch: self._context(
                    a, step.run_id, step.partition, key, step.attempt, item=item, batch=batch
                ),
                previous_run_id=previous,
            )
            return p.scatter_coordinator.execute(request)
        extra: dict[str, Any] | None = None
        if a.parallel is not None:
            try:
                branches = p.parallel_coordinator.branch_results(
                    ParallelRequest(
                        p, a, step.run_id, step.partition, branch_outcomes,
                        attempt=max(step.attempt, 1), metadata=recorded,
                    )
                )
            except ExecutionError as exc:
                raise _UpstreamFailed(str(exc)) from exc
            extra = {}
            if "branches" in a.join_params:
                extra["branches"] = branches
            if "input" in a.join_params:
                extra["input"] = dict(values)
        kwargs = bind_arguments(a, values, context, extra=extra)
        return call_with_timeout(a.fn, kwargs, timeout=a.timeout, what=f"asset {a.name!r}")

    def _outcome(
        self,
        a: AssetDef,
        step: StepRecord,
        context: Context,
        value: Any,
        upstream: list[str],
        started_at: datetime,
        recorded: Mapping[str, Any],
    ) -> StepOutcome:
        p = self._p
        if isinstance(value, Skip):
            return self._skip(a, step, started_at, value.reason or "asset returned Skip")
        if isinstance(value, WaitForApproval):
            io_name, location, staged = self._store_value(a, step, value.value)
            seconds = to_seconds(value.timeout, what="WaitForApproval timeout")
            approval = Approval(
                id=0,
                pipeline=p.name,
                run_id=step.run_id,
                asset=a.name,
                partition=step.partition,
                message=value.message,
                status="pending",
                created_at=_now(),
                expires_at=_now() + timedelta(seconds=seconds) if seconds is not None else None,
                io_manager=io_name,
                location=location,
                metadata=dict(value.metadata),
            )
            return StepOutcome("waiting", approval=approval, staged=staged)
        if isinstance(value, SignalGate):
            if context.gate is None or context.gate.token != value.token:
                raise ExecutionError(
                    f"asset {a.name!r} returned a SignalGate it did not create; return the gate "
                    "from context.signal_gate(...)"
                )
            gate = Gate(
                token_hash=hash_token(value.token),
                pipeline=p.name,
                run_id=step.run_id,
                asset=a.name,
                partition=step.partition,
                status="pending",
                created_at=_now(),
                expires_at=value.expires_at,
                metadata=dict(value.metadata),
            )
            return StepOutcome("waiting", gate=gate)
        if a.is_router:
            branches = a.router_branches or ()
            if not isinstance(value, str) or value not in branches:
                raise ExecutionError(
                    f"router {a.name!r} returned {value!r}; it must return one of {list(branches)}"
                )
            replayed = p.store.get_route_decision(step.run_id, a.name, step.partition)
            value = p.store.record_route_decision(step.run_id, a.name, step.partition, value)
            if replayed is None:  # a replayed decision was announced when it was made
                p.emit(
                    Event(
                        "route.decided",
                        p.name,
                        step.run_id,
                        a.name,
                        step.partition,
                        {"branch": value},
                    )
                )
        io_name, location, staged = self._store_value(a, step, value)
        metadata = {**a.metadata, **context.metadata, **recorded}
        lineage_error = p.emit_lineage(step.run_id, a.name, step.partition, upstream)
        if lineage_error is not None and p.on_lineage_error == "fail":
            p.io_manager(io_name).delete(location)
            raise ExecutionError(f"lineage emission failed: {lineage_error}")
        if lineage_error is not None:
            metadata["lineage_error"] = lineage_error
        mat = self._record(
            a,
            step,
            "succeeded",
            started_at,
            io_name=io_name,
            location=location,
            upstream=upstream,
            metadata=metadata,
        )
        return StepOutcome("succeeded", materialization=mat, staged=staged)

    # --- helpers ----------------------------------------------------------------------
    def _store_value(
        self, a: AssetDef, step: StepRecord, value: Any
    ) -> tuple[str, str, tuple[StagedValue, ...]]:
        """Store ``value`` with the asset's IO manager, or stage it for ``finish_step`` when
        the store can write it in the step's own transaction (see :class:`StagedValue`)."""
        p = self._p
        io_name = a.io_manager or p.default_io_manager
        key = StorageKey(p.name, a.name, step.partition, step.run_id)
        manager = p.io_manager(io_name)
        staged: tuple[StagedValue, ...] = ()
        if self._stages(io_name, manager):
            staged = (manager.stage(key, value),)  # type: ignore[attr-defined]
            location = staged[0].location
        else:
            location = manager.store(key, value)
        p.emit(
            Event("io.stored", p.name, step.run_id, a.name, step.partition, {"io_manager": io_name})
        )
        return io_name, location, staged

    def prefetch_sources(self) -> dict[str, str]:
        """``Continuation.prefetch``: the ``prefetch_source`` of every IO manager whose
        values ride on ``finish_step`` (same database as the store) and that can decode
        what the store reads back (a manager may offer none yet, e.g. before its table
        exists)."""
        if self._prefetch_from is None:
            p = self._p
            self._prefetch_from = [
                (name, manager)
                for name in p.io_manager_names
                if self._stages(name, manager := p.io_manager(name))
                and callable(getattr(manager, "decode_prefetched", None))
            ]
        return {
            name: str(source)
            for name, manager in self._prefetch_from
            if (source := getattr(manager, "prefetch_source", None))
        }

    def _stages(self, io_name: str, manager: object) -> bool:
        """Whether values of ``manager`` are written by the store's ``finish_step``."""
        known = self._staging.get(io_name)
        if known is None:
            target = getattr(manager, "staging_target", None)
            accepts = getattr(self._p.store, "accepts_staging", None)
            known = bool(
                target and callable(getattr(manager, "stage", None)) and accepts and accepts(target)
            )
            self._staging[io_name] = known
        return known

    def _skip(
        self, a: AssetDef, step: StepRecord, started_at: datetime, reason: str
    ) -> StepOutcome:
        mat = self._record(a, step, "skipped", started_at, error=reason)
        return StepOutcome("skipped", materialization=mat, error=reason)

    def _record(
        self,
        a: AssetDef,
        step: StepRecord,
        state: Any,
        started_at: datetime,
        *,
        io_name: str | None = None,
        location: str | None = None,
        error: str | None = None,
        upstream: list[str] | tuple[str, ...] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> MaterializationRecord:
        return MaterializationRecord(
            id=uuid.uuid4().hex,
            pipeline=self._p.name,
            run_id=step.run_id,
            asset=a.name,
            partition=step.partition,
            state=state,
            io_manager=io_name,
            location=location,
            attempt=max(step.attempt, 1),
            started_at=started_at,
            finished_at=_now(),
            error=error,
            upstream=tuple(dict.fromkeys(upstream)),
            metadata=dict(metadata or {}),
        )

    def _context(
        self,
        a: AssetDef,
        run_id: str,
        enc: str,
        key: Any,
        attempt: int,
        *,
        item: Any = None,
        batch: Batch | None = None,
    ) -> Context:
        return Context(
            run_id=run_id,
            pipeline=self._p.name,
            asset=a.name,
            partition=key,
            partition_key=enc,
            resources=self._p.resources.for_asset(a.requires),
            attempt=max(attempt, 1),
            scatter_item=item,
            batch=batch,
        )

    def context_for(self, a: AssetDef, run_id: str, enc: str, attempt: int = 1) -> Context:
        """A context for hooks that run outside a claimed step (on_signal, on_timeout)."""
        return self._context(a, run_id, enc, decode_partition(enc), attempt)

    def record(
        self, a: AssetDef, step: StepRecord, state: Any, **kwargs: Any
    ) -> MaterializationRecord:
        """Build a materialization record for ``step`` (used by resume paths)."""
        return self._record(a, step, state, _now(), **kwargs)


class _UpstreamFailed(Exception):
    pass
