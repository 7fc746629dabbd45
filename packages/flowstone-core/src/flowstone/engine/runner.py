"""StepRunner: claim one step, run its asset, record the outcome, return what became ready.

Every executor uses it: the in-process executor from a thread pool, the Celery executor
from a task. One step = one claim transaction, the asset call, the value stored through
the IO manager, then one ``finish_step`` transaction that records materialization and
lineage and schedules dependents (value first, metadata second: a crash in between
leaves an orphan value, never a record without a value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from flowstone.asset import AssetDef
from flowstone.context import Context
from flowstone.engine.inputs import DepOutcome, resolve_inputs
from flowstone.engine.invoke import bind_arguments, call_with_timeout
from flowstone.engine.leases import LeaseKeeper
from flowstone.engine.prefetch import PrefetchCache
from flowstone.engine.requests import ParallelRequest, ScatterRequest
from flowstone.engine.scatter_retry import RETRY_TAG
from flowstone.engine.timeouts import mark_branch_started
from flowstone.engine.values import StoredValue
from flowstone.errors import (
    EncodingError,
    ExecutionError,
    StorageError,
    UnsafeKeyError,
    ValueNotFoundError,
)
from flowstone.events import EventKind
from flowstone.outcomes import Retry, SignalGate, Skip, WaitForApproval, to_seconds
from flowstone.partitions import decode_partition
from flowstone.protocols import ClaimedReads, Finish, StorageKey
from flowstone.records import (
    Approval,
    Continuation,
    Fence,
    Gate,
    MaterializationRecord,
    StepOutcome,
    StepRecord,
    StepTransition,
)
from flowstone.runtime import Runtime
from flowstone.scatter import Batch, Deferred

if TYPE_CHECKING:
    from flowstone.engine.batch import FinishBatch

__all__ = [
    "PendingFinish",
    "StepResult",
    "StepRunner",
    "describe_error",
    "hash_token",
    "is_infrastructure",
    "materialization_id",
    "retry_in_place",
]

log = logging.getLogger("flowstone.engine")
_T = TypeVar("_T")
MAX_SOFT_RETRIES = 1000
_CACHED_MATERIALIZATIONS = 4096


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


_MATERIALIZATIONS = uuid.UUID("6f1c2a52-3d4e-5b8f-9a0c-1e2d3f4a5b6c")
_NAMESPACE = _MATERIALIZATIONS.bytes


def materialization_id(run_id: str, asset: str, partition: str) -> str:
    """The id of the materialization of ``asset`` [``partition``] in ``run_id``: one record
    per step, so the id is derived from it and stays the same when the step finishes again
    (a resumed run), on every store; lineage and join records keep naming it."""
    # uuid.uuid5(_MATERIALIZATIONS, name).hex, without building the UUID object (per step)
    name = _NAMESPACE + f"{run_id}\x00{asset}\x00{partition}".encode()
    digest = bytearray(hashlib.sha1(name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return digest.hex()


_DECODE: Any = object()  # context_for's default: decode the partition


@dataclasses.dataclass(frozen=True, slots=True)
class StepResult:
    """What running (or finishing) one step left to do.

    ``ready``: steps to dispatch (a step the retry policy sent back is among them, itself,
    with ``not_before`` set). ``next``: the step the finish claimed for this caller (a
    :class:`~flowstone.records.Continuation`), to run here with
    :meth:`StepRunner.run_claimed` or hand back (see :func:`flowstone.engine.run_chain`).
    """

    ready: tuple[StepRecord, ...] = ()
    next: StepRecord | None = None

    @property
    def steps(self) -> tuple[StepRecord, ...]:
        """Everything left: ``ready`` and ``next`` (which is already claimed, ``running``)."""
        return self.ready if self.next is None else (*self.ready, self.next)


_NOTHING = StepResult()


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


@dataclasses.dataclass(frozen=True, slots=True)
class PendingFinish:
    """A step that ran and whose outcome is not recorded yet: its finish waits in a
    :class:`~flowstone.engine.batch.FinishBatch` to be committed with others."""

    step: StepRecord
    outcome: StepOutcome
    started_at: datetime
    then: Continuation | None


class StepRunner:
    """Runs steps of one pipeline's :class:`~flowstone.runtime.Runtime`. Thread-safe; one
    per pipeline per process."""

    __slots__ = ("_leases", "_mats", "_mats_lock", "_owner_prefix", "prefetched", "runtime")

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self._leases = LeaseKeeper(runtime.store)
        # succeeded materializations this process recorded: immutable once committed, and
        # read again by each dependent (saves two store queries per dependency edge)
        self._mats: OrderedDict[object, MaterializationRecord] = OrderedDict()
        self._mats_lock = threading.Lock()
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

    def dispatch(self, run_id: str, steps: tuple[StepRecord, ...] | list[StepRecord]) -> None:
        """Hand ``steps`` to the runtime's executor (resume paths, sweepers)."""
        if steps:
            self.runtime.executor.dispatch(self, run_id, steps)

    # ------------------------------------------------------------------------------
    def run(self, step: StepRecord, *, claim_next: bool = False) -> StepResult:
        """Run a ready ``step`` (claiming it first) or one already claimed for this
        caller (state ``running``, a continuation); see :meth:`run_claimed`."""
        if step.state == "running":
            return self.run_claimed(step, claim_next=claim_next)
        return self.run_step(step.run_id, step.asset, step.partition, claim_next=claim_next)

    def run_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        owner: str | None = None,
        lease_seconds: float | None = None,
        claim_next: bool = False,
        batch: FinishBatch | None = None,
    ) -> StepResult:
        """Claim and execute one step; return what it left to do.

        Returns an empty result when the step is not claimable (a duplicate delivery, a
        cancelled run). Asset failures are recorded, never raised; only infrastructure
        errors (the store is unreachable) propagate, so a queue can redeliver the message.
        With ``claim_next`` see :meth:`run_claimed`.
        """
        rt = self.runtime
        owner = owner or self.owner()
        lease = lease_seconds or rt.policies.lease_seconds
        step = rt.store.claim_step(
            run_id, asset, partition, owner=owner, lease_seconds=lease, pipeline=rt.name
        )
        if step is None:
            self._refused_claim(run_id, asset, partition)
            return _NOTHING
        return self.run_claimed(step, lease_seconds=lease, claim_next=claim_next, batch=batch)

    def claim_many(
        self, keys: Sequence[tuple[str, str, str]], *, owner: str | None = None
    ) -> list[StepRecord | None]:
        """Claim the steps at ``keys`` (run, asset, partition) for ``owner`` (this thread by
        default), each exactly as :meth:`run_step` claims one, in one round trip when the
        store offers :class:`~flowstone.protocols.BulkClaim`; ``None`` for a step that is
        not claimable (a duplicate delivery, a cancelled run). Run each with
        :meth:`run_claimed`, keeping its lease meanwhile with :meth:`holding`."""
        rt = self.runtime
        owner = owner or self.owner()
        lease = rt.policies.lease_seconds
        bulk = rt.capabilities.bulk_claim
        if bulk is not None and len(keys) > 1:
            steps = bulk.claim_steps(keys, owner=owner, lease_seconds=lease, pipeline=rt.name)
        else:
            steps = []
            try:
                for r, a, p in keys:
                    steps.append(rt.store.claim_step(
                        r, a, p, owner=owner, lease_seconds=lease, pipeline=rt.name
                    ))  # fmt: skip
            except Exception:  # none claimed so far waits for its lease: give them back
                for step in steps:
                    if step is not None:
                        with contextlib.suppress(Exception):
                            rt.store.retry_step(
                                step.run_id, step.asset, step.partition, delay_seconds=0.0,
                                error="handed back: claiming the steps with it failed",
                                fence=_fence_of(step),
                            )  # fmt: skip
                raise
        for key, step in zip(keys, steps, strict=True):
            if step is None:
                self._refused_claim(*key)
        return steps

    def holding(self, step: StepRecord) -> contextlib.AbstractContextManager[threading.Event]:
        """Keep the lease of ``step`` (claimed, not started yet) alive while the block runs;
        yields the event set if the claim is lost (see :class:`LeaseKeeper`)."""
        return self._leases.keep(
            step.run_id, step.asset, step.partition, step.owner or self.owner(),
            self.runtime.policies.lease_seconds, step.attempt,
        )  # fmt: skip

    def _refused_claim(self, run_id: str, asset: str, partition: str) -> None:
        """A claim came back None: usually a duplicate delivery (nothing to say); if the
        run belongs to another pipeline, the message was wrong: log it as rejected."""
        run = self.runtime.store.get_run(run_id)
        if run is not None and run.pipeline != self.runtime.name:
            log.warning(
                "rejected a message for asset %r [%s] of pipeline %r: run %s belongs to"
                " pipeline %r; nothing ran",
                asset, partition, self.runtime.name, run_id, run.pipeline,
            )  # fmt: skip

    def run_claimed(
        self,
        step: StepRecord,
        *,
        lease_seconds: float | None = None,
        claim_next: bool = False,
        batch: FinishBatch | None = None,
    ) -> StepResult:
        """Execute ``step``, already claimed for ``step.owner``; return what it left to do.

        With ``claim_next`` the step's ``finish_step`` also claims the first dependent
        that became ready for the same owner (a :class:`~flowstone.records.Continuation`):
        it comes back as :attr:`StepResult.next`, for the caller to run next with this
        method, without a claim round trip.

        With ``batch``, the finish of an asset that ran to an outcome waits in the batch
        (recorded, with the others, by :meth:`FinishBatch.flush
        <flowstone.engine.batch.FinishBatch.flush>`, which returns what it left to do) and
        this returns nothing; retries, deferrals and bookkeeping errors are recorded at
        once as without it.
        """
        rt = self.runtime
        run_id, asset, partition = step.run_id, step.asset, step.partition
        owner = step.owner or self.owner()
        lease = lease_seconds or rt.policies.lease_seconds
        then = Continuation(owner, lease) if claim_next else None
        a = rt.graph[asset]
        if asset in rt.branch_index:
            mark_branch_started(self, run_id, asset)
        started_at = _now()
        if rt.events:  # (the payload is built only for someone listening)
            rt.events.emit(
                "asset.started", run_id, asset, partition,
                {"attempt": step.attempt, "queued_s": step.queued_s, "takeover": step.took_over},
            )  # fmt: skip
        try:
            with self._leases.keep(run_id, asset, partition, owner, lease, step.attempt) as lost:
                result = self._execute(step, a, owner, started_at, lost)
            if isinstance(result, _Deferring):
                return self.complete(
                    step, result.outcome, started_at=started_at, on_applied=result.start
                )
            if isinstance(result, _RetryLater):
                return self._retry_later(step, result)
            if batch is not None and batch.batching:
                batch.add(PendingFinish(step, result, started_at, then))
                return _NOTHING
            return self._finish_holding(step, result, started_at, then)
        except (_Bookkeeping, StorageError) as failed:
            # the engine's own read or write failed (store, value write), not the asset:
            # release the claim so the step runs again soon instead of waiting out its lease
            cause: BaseException = failed
            if isinstance(failed, _Bookkeeping) and failed.__cause__ is not None:
                cause = failed.__cause__
            if isinstance(cause, StorageError) and not is_infrastructure(cause):
                raise
            if step.attempt >= _MAX_INFRA_ATTEMPTS:  # persistent (disk full...): say so
                return self._infra_failed(step, a, started_at, cause)
            error = f"infrastructure error (not the asset's): {describe_error(cause)}"
            # at once the first time (a fresh connection usually does it), then backing off
            delay = 0.0 if step.attempt <= 1 else _INFRA_RETRY_S * 2 ** (step.attempt - 2)
            delay = min(delay, _MAX_INFRA_DELAY_S)
            log.warning("asset %s [%s]: %s; it runs again in %gs", asset, partition, error, delay)
            try:
                return self._retry_later(step, _RetryLater(delay, error))
            except Exception:
                raise cause from None  # the store is down: the lease expires, the sweeper acts

    def _finish_holding(
        self,
        step: StepRecord,
        outcome: StepOutcome,
        started_at: datetime,
        then: Continuation | None,
    ) -> StepResult:
        """Record ``outcome`` (the asset ran, its value is stored); on an infrastructure
        error retry the finish itself, keeping the claim, before giving up: the asset's
        code does not run again because the bookkeeping after it failed (a join used to
        run twice when backends were terminated)."""
        return retry_in_place(
            f"recording the outcome of {step.asset} [{step.partition}]",
            lambda: self.complete(step, outcome, started_at=started_at, then=then),
        )

    def _infra_failed(
        self, step: StepRecord, a: AssetDef, started_at: datetime, cause: BaseException
    ) -> StepResult:
        """Record a step whose bookkeeping failed ``_MAX_INFRA_ATTEMPTS`` times as failed,
        naming the error; if even that cannot be recorded, raise it."""
        error = (
            f"{describe_error(cause)} (an infrastructure error, {step.attempt} attempts); "
            "fix the store or IO manager and resume the run"
        )
        mat = self._record(a, step, "failed", started_at, error=error)
        try:
            return self.complete(step, StepOutcome("failed", materialization=mat, error=error))
        except Exception:
            raise cause from None

    def _deliver(self, value: SignalGate, gate: Gate) -> None:
        """Hand a recorded gate's token to its ``on_token``; if that fails, the gate
        expires (``on_timeout`` runs, or the asset fails naming the error)."""
        assert value.deliver is not None  # checked by the caller
        try:
            value.deliver(value.token)
        except Exception as exc:
            log.warning(
                "delivering the signal token of %s [%s] failed (%s); the gate expires",
                gate.asset, gate.partition, describe_error(exc),
            )  # fmt: skip
            from flowstone.engine.resume import expire_gate  # resume builds on this module

            expire_gate(self, gate, reason=f"on_token failed: {describe_error(exc)}")

    def _retry_later(self, step: StepRecord, later: _RetryLater) -> StepResult:
        """Put a running ``step`` back to ready after ``later.delay`` seconds."""
        rt = self.runtime
        # the delay, not a time: the store's clock (the database's) sets not_before
        retried = rt.store.retry_step(
            step.run_id, step.asset, step.partition,
            delay_seconds=later.delay, error=later.error, fence=_fence_of(step),
        )  # fmt: skip
        if not retried:
            return _NOTHING
        rt.events.emit(
            "asset.retrying", step.run_id, step.asset, step.partition,
            {"attempt": step.attempt, "delay_s": later.delay, "error": later.error},
        )  # fmt: skip
        return StepResult((retried,))

    def complete(
        self,
        step: StepRecord,
        outcome: StepOutcome,
        *,
        started_at: datetime | None = None,
        on_applied: Callable[[], None] | None = None,
        then: Continuation | None = None,
    ) -> StepResult:
        """Record ``outcome`` for ``step`` (also used to resume waiting steps).

        ``on_applied`` runs only if this call changed the step (not for a duplicate).
        With ``then``, a dependent claimed for it comes back as :attr:`StepResult.next`."""
        fence = _fence_of(step)
        transition, reads = self._finish(step, outcome, then, fence)
        return self._applied(step, outcome, transition, reads, started_at, on_applied)

    def complete_many(self, pending: Sequence[PendingFinish]) -> list[StepResult]:
        """Record the outcomes of ``pending`` (steps that ran, in that order) in one store
        transaction when the store offers :class:`~flowstone.protocols.BatchFinish`, else
        one by one; return what each left to do, in the same order. An infrastructure
        error is retried in place (the assets do not run again), then raised with none of
        them recorded. A finish the store refused (its step no longer exists: the run was
        deleted meanwhile) is logged as an error and left out; the others are recorded."""
        store = self.runtime.capabilities.batch_finish
        if store is None or len(pending) < 2:
            return [
                self._finish_holding(p.step, p.outcome, p.started_at, p.then) for p in pending
            ]
        finishes = [
            Finish(p.step.run_id, p.step.asset, p.step.partition, p.outcome, p.then,
                   _fence_of(p.step))
            for p in pending
        ]  # fmt: skip
        sources = self.runtime.values.prefetch_sources()
        done = retry_in_place(
            f"recording the outcomes of {len(pending)} steps",
            lambda: store.finish_steps(finishes, sources=sources),
        )
        results: list[StepResult] = []
        for p, got in zip(pending, done, strict=True):
            if isinstance(got, Exception):
                log.error("the outcome of asset %s [%s] of run %s was not recorded: %s",
                          p.step.asset, p.step.partition, p.step.run_id, describe_error(got))
                results.append(_NOTHING)
                continue
            transition, reads = got
            results.append(self._applied(p.step, p.outcome, transition, reads, p.started_at))
        return results

    def _applied(
        self,
        step: StepRecord,
        outcome: StepOutcome,
        transition: StepTransition,
        reads: ClaimedReads | None,
        started_at: datetime | None,
        on_applied: Callable[[], None] | None = None,
    ) -> StepResult:
        """What a recorded finish leaves to do: events, the cache of succeeded records,
        the continuation's prefetched inputs; nothing for a refused (duplicate) finish."""
        rt = self.runtime
        fence = _fence_of(step)
        if not transition.applied:
            if fence is not None:
                log.warning(
                    "asset %s [%s] of run %s: the finish of attempt %d (owner %s) was refused:"
                    " the step was claimed again or finished by another runner; its value is"
                    " left unreferenced",
                    step.asset, step.partition, step.run_id, fence.attempt, fence.owner,
                )  # fmt: skip
            return _NOTHING
        if outcome.materialization is not None and outcome.state == "succeeded":
            self._remember(outcome.materialization)
        if on_applied is not None:
            on_applied()
        if rt.events:
            self._announce(step, outcome, started_at, transition.run_status)
        if transition.claimed is None:
            return StepResult(transition.ready)
        # what the continuation reads first, if the store sent it along: succeeded records
        # are terminal, so they can stand in for the store (see succeeded()); so can the
        # values: this step's own, and those the store read with them
        if reads is not None:
            for dep, mat in reads.inputs:
                if dep.state == "succeeded" and mat is not None and mat.state == "succeeded":
                    self._remember(mat)
            self.prefetched.put(reads.values)
        self.prefetched.put((v.location, v.encoded) for v in outcome.staged)
        return StepResult(transition.ready, transition.claimed)

    def _finish(
        self,
        step: StepRecord,
        outcome: StepOutcome,
        then: Continuation | None,
        fence: Fence | None,
    ) -> tuple[StepTransition, ClaimedReads | None]:
        rt = self.runtime
        reader = rt.capabilities.continuation_reads
        if then is not None and reader is not None:
            return reader.finish_step_reading(
                step.run_id, step.asset, step.partition, outcome,
                then=then, sources=rt.values.prefetch_sources(), fence=fence,
            )  # fmt: skip
        transition = rt.store.finish_step(
            step.run_id, step.asset, step.partition, outcome, then=then, fence=fence
        )
        return transition, None

    def _announce(
        self,
        step: StepRecord,
        outcome: StepOutcome,
        started_at: datetime | None,
        run_status: str | None,
    ) -> None:
        events = self.runtime.events
        run_id, asset, partition = step.run_id, step.asset, step.partition
        data: dict[str, Any] = {}
        if started_at is not None:
            data["duration_s"] = round((_now() - started_at).total_seconds(), 6)
        if outcome.error:
            data["error"] = outcome.error
        if outcome.state == "waiting":
            on = "approval" if outcome.approval else "gate"
            if outcome.gate is not None and outcome.gate.metadata.get("kind") == "deferred":
                on = "deferred"
            events.emit("asset.waiting", run_id, asset, partition, {"on": on})
            if on != "deferred":
                kind: EventKind = "approval.requested" if on == "approval" else "gate.opened"
                events.emit(kind, run_id, asset, partition, data)
        else:
            done: EventKind = {"succeeded": "asset.succeeded", "skipped": "asset.skipped"}.get(
                outcome.state, "asset.failed"
            )  # type: ignore[assignment]
            if outcome.materialization is not None:
                data["materialization_id"] = outcome.materialization.id
            events.emit(done, run_id, asset, partition, data)
        if run_status in ("succeeded", "failed", "cancelled"):
            events.emit("run.finished", run_id, data={"status": run_status})

    # ------------------------------------------------------------------------------
    def _execute(
        self,
        step: StepRecord,
        a: AssetDef,
        owner: str,
        started_at: datetime,
        lease_lost: threading.Event | None = None,
    ) -> StepOutcome | _RetryLater | _Deferring:
        rt = self.runtime
        run_id, enc = step.run_id, step.partition
        key = decode_partition(enc)
        inputs = resolve_inputs(self, run_id, a, key)
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
        context: Context | None = None
        try:
            # inside the try: a resource that fails to set up fails this asset (recorded,
            # retried by its policy) instead of escaping and leaving the step claimed
            context = self._context(a, run_id, enc, key, step.attempt, lease_lost=lease_lost)
            value = self._call(a, step, context, values, branch_outcomes, owner, key, recorded)
            if isinstance(value, Deferred):
                gate = Gate(
                    token_hash=hash_token(value.token),
                    pipeline=rt.name,
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
        except _Bookkeeping:
            raise
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
                metadata={**recorded, **_logs(context), "traceback": tb},
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
        rt = self.runtime
        if a.is_router:
            decided = rt.store.get_route_decision(step.run_id, a.name, step.partition)
            if decided is not None:  # replayed, never re-evaluated
                return decided
        if a.scatter is not None:
            # one read of the run record: a retry_failed_items run names the earlier run
            run = rt.store.get_run(step.run_id)
            previous = run.tags.get(RETRY_TAG) if run is not None else None
            request = ScatterRequest(
                runner=self,
                asset=a,
                run_id=step.run_id,
                partition=step.partition,
                key=key,
                deps=values,
                attempt=step.attempt,
                owner=owner,
                make_context=lambda item, batch: self._context(
                    a,
                    step.run_id,
                    step.partition,
                    key,
                    step.attempt,
                    item=item,
                    batch=batch,
                    lease_lost=context.lease_lost,
                ),
                previous_run_id=previous,
            )
            return rt.scatter_coordinator.execute(request)
        extra: dict[str, Any] | None = None
        if a.parallel is not None:
            try:
                branches = rt.parallel_coordinator.branch_results(
                    ParallelRequest(
                        rt, a, step.run_id, step.partition, branch_outcomes,
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
    ) -> StepOutcome | _Deferring:
        rt = self.runtime
        if isinstance(value, Skip):
            return self._skip(a, step, started_at, value.reason or "asset returned Skip")
        if isinstance(value, WaitForApproval):
            held = self._store_value(a, step, value.value)
            seconds = to_seconds(value.timeout, what="WaitForApproval timeout")
            approval = Approval(
                id=0,
                pipeline=rt.name,
                run_id=step.run_id,
                asset=a.name,
                partition=step.partition,
                message=value.message,
                status="pending",
                created_at=_now(),
                expires_at=_now() + timedelta(seconds=seconds) if seconds is not None else None,
                io_manager=held.io_manager,
                location=held.location,
                metadata=dict(value.metadata),
            )
            return StepOutcome("waiting", approval=approval, staged=held.staged)
        if isinstance(value, SignalGate):
            if context.gate is None or context.gate.token != value.token:
                raise ExecutionError(
                    f"asset {a.name!r} returned a SignalGate it did not create; return the gate "
                    "from context.signal_gate(...)"
                )
            gate = Gate(
                token_hash=hash_token(value.token),
                pipeline=rt.name,
                run_id=step.run_id,
                asset=a.name,
                partition=step.partition,
                status="pending",
                created_at=_now(),
                expires_at=value.expires_at,
                metadata=dict(value.metadata),
            )
            waiting = StepOutcome("waiting", gate=gate)
            if value.deliver is None:
                return waiting
            # the token goes out only once the gate is recorded: a callback that comes back
            # at once finds it (handing it out from the asset raced with the record)
            return _Deferring(waiting, lambda: self._deliver(value, gate))
        if a.is_router:
            branches = a.router_branches or ()
            if not isinstance(value, str) or value not in branches:
                raise ExecutionError(
                    f"router {a.name!r} returned {value!r}; it must return one of {list(branches)}"
                )
            replayed = rt.store.get_route_decision(step.run_id, a.name, step.partition)
            value = rt.store.record_route_decision(step.run_id, a.name, step.partition, value)
            if replayed is None:  # a replayed decision was announced when it was made
                rt.events.emit(
                    "route.decided", step.run_id, a.name, step.partition, {"branch": value}
                )
        stored = self._store_value(a, step, value)
        metadata = {**a.metadata, **context.metadata, **recorded, **_logs(context)}
        if stored.described:
            metadata["value"] = dict(stored.described)
        lineage_error = rt.events.lineage(step.run_id, a.name, step.partition, upstream)
        if lineage_error is not None and rt.policies.on_lineage_error == "fail":
            if not stored.staged:  # a staged value was never written
                rt.values.delete(stored.io_manager, stored.location)
            raise ExecutionError(f"lineage emission failed: {lineage_error}")
        if lineage_error is not None:
            metadata["lineage_error"] = lineage_error
        mat = self._record(
            a,
            step,
            "succeeded",
            started_at,
            io_name=stored.io_manager,
            location=stored.location,
            upstream=upstream,
            metadata=metadata,
        )
        return StepOutcome("succeeded", materialization=mat, staged=stored.staged)

    # --- helpers ----------------------------------------------------------------------
    def _store_value(self, a: AssetDef, step: StepRecord, value: Any) -> StoredValue:
        """Store ``value`` at this attempt's own location (staged for ``finish_step`` when
        the store writes it in the step's transaction)."""
        rt = self.runtime
        key = StorageKey(
            rt.name, a.name, step.partition, step.run_id, attempt=step.attempt, metadata=a.metadata
        )
        try:
            return rt.values.store(a.io_manager, key, value)
        except StorageError as exc:
            if is_infrastructure(exc):
                raise _Bookkeeping(str(exc)) from exc
            raise

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
            id=materialization_id(step.run_id, a.name, step.partition),
            pipeline=self.runtime.name,
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
        lease_lost: threading.Event | None = None,
    ) -> Context:
        return Context(
            run_id=run_id,
            pipeline=self.runtime.name,
            asset=a.name,
            partition=key,
            partition_key=enc,
            resources=self.runtime.resources.for_asset(a.requires),
            attempt=max(attempt, 1),
            scatter_item=item,
            batch=batch,
            lease_lost=lease_lost,
        )

    def context_for(
        self,
        a: AssetDef,
        run_id: str,
        enc: str,
        attempt: int = 1,
        *,
        key: Any = _DECODE,
        lease_lost: threading.Event | None = None,
    ) -> Context:
        """A context for hooks that run outside a claimed step (on_signal, on_timeout) and
        for scatter items. ``key``: ``enc`` decoded, when the caller has it already (a
        scatter chunk decodes its partition once for all its items); ``lease_lost``: the
        event of the claim the caller runs under (a scatter chunk's claim on its items)."""
        return self._context(
            a,
            run_id,
            enc,
            decode_partition(enc) if key is _DECODE else key,
            attempt,
            lease_lost=lease_lost,
        )

    def build_record(
        self, a: AssetDef, step: StepRecord, state: Any, **kwargs: Any
    ) -> MaterializationRecord:
        """Build (not store) a materialization record for ``step``, finished now (resume
        paths hand it to :meth:`complete`)."""
        return self._record(a, step, state, _now(), **kwargs)


class _UpstreamFailed(Exception):
    pass


def _logs(context: Context | None) -> dict[str, Any]:
    """The step's own ``context.log`` lines, for its materialization's metadata."""
    lines = () if context is None else context.log_lines
    return {"logs": list(lines)} if lines else {}


class _Bookkeeping(Exception):
    """The engine's own write failed (``__cause__``): retried, never the asset's failure."""


_INFRA_RETRY_S = 0.5  # delay after a second infrastructure error, doubled per attempt
_MAX_INFRA_DELAY_S = 30.0
_MAX_INFRA_ATTEMPTS = 3
_FINISH_TRIES = 3  # the finish of an asset that ran, in place, before the step is retried
_NOT_INFRASTRUCTURE = (EncodingError, UnsafeKeyError, ValueNotFoundError)


def retry_in_place(what: str, work: Callable[[], _T]) -> _T:
    """``work()`` (the engine's own bookkeeping, after the user's code ran), tried again in
    place when it fails on an infrastructure error: at once, then after 0.5 s, up to
    ``_FINISH_TRIES`` tries, so the user's code does not run again for it."""
    for attempt in range(1, _FINISH_TRIES + 1):
        try:
            return work()
        except StorageError as exc:
            if not is_infrastructure(exc) or attempt == _FINISH_TRIES:
                raise
            log.warning("%s: infrastructure error (not the asset's): %s; trying again",
                        what, describe_error(exc))  # fmt: skip
            time.sleep(_INFRA_RETRY_S * (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def is_infrastructure(exc: StorageError) -> bool:
    """A store or IO failure (connection lost, lock timeout...), as opposed to a value
    that cannot be encoded or a key that would escape its prefix."""
    return not isinstance(exc, _NOT_INFRASTRUCTURE)


def _fence_of(step: StepRecord) -> Fence | None:
    """The claim a finish of ``step`` is fenced by: its owner and attempt while it is
    running (a runner finishing what it claimed) or waiting under a resolver's claim (a
    consumed gate, ``consume_gate(claim=...)``); None for a step nobody holds (an
    approval's decision)."""
    if step.state in ("running", "waiting") and step.owner is not None:
        return Fence(step.owner, step.attempt)
    return None
