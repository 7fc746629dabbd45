"""Records and helpers the run store contract suites share (not a public API)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from flowstone.protocols import RunStore
from flowstone.records import (
    Approval,
    Gate,
    MaterializationRecord,
    RunRecord,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)

T = TypeVar("T")
REPETITIONS = 20
THREADS = 8
DAY = "2024-03-01"


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _now() -> datetime:
    return datetime.now(UTC)


def _diamond(partition: str = DAY) -> list[StepSpec]:
    """orders -> (clean, enrich) -> report"""
    return [
        StepSpec("orders", partition),
        StepSpec("clean", partition, deps=(("orders", partition),)),
        StepSpec("enrich", partition, deps=(("orders", partition),)),
        StepSpec("report", partition, deps=(("clean", partition), ("enrich", partition))),
    ]


def _create(
    store: RunStore,
    steps: Sequence[StepSpec],
    *,
    pipeline: str | None = None,
    created_at: datetime | None = None,
) -> tuple[RunRecord, tuple[StepRecord, ...]]:
    at = created_at or _now()
    run = RunRecord(
        run_id=_uid("run"),
        pipeline=pipeline or _uid("sales"),
        targets=(steps[-1].asset,) if steps else (),
        partition=DAY,
        status="running",
        created_at=at,
        updated_at=at,
        tags={"team": "finance"},
    )
    return run, store.create_run(run, steps)


def _mat(
    run: RunRecord,
    asset: str,
    *,
    state: Any = "succeeded",
    upstream: Sequence[str] = (),
    finished_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
) -> MaterializationRecord:
    return MaterializationRecord(
        id=_uid("mat"),
        pipeline=run.pipeline,
        run_id=run.run_id,
        asset=asset,
        partition=run.partition,
        state=state,
        io_manager="fs",
        location=f"/data/{run.pipeline}/{asset}/{run.run_id}.json",
        started_at=_now(),
        finished_at=finished_at or _now(),
        upstream=tuple(upstream),
        metadata=metadata if metadata is not None else {"rows": 1200},
    )


def _succeed(
    store: RunStore, run: RunRecord, asset: str, upstream: Sequence[str] = ()
) -> StepTransition:
    assert store.claim_step(run.run_id, asset, DAY, owner="w1", lease_seconds=60) is not None
    return store.finish_step(
        run.run_id, asset, DAY, StepOutcome("succeeded", _mat(run, asset, upstream=upstream))
    )


def _all_at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released together by a barrier; re-raise any failure."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _approval(run: RunRecord, asset: str, expires_at: datetime | None = None) -> Approval:
    return Approval(
        id=0,
        pipeline=run.pipeline,
        run_id=run.run_id,
        asset=asset,
        partition=DAY,
        message="trade above 1M EUR needs sign-off",
        status="pending",
        created_at=_now(),
        expires_at=expires_at,
        io_manager="fs",
        location=f"/data/{asset}.json",
        metadata={"amount": 1_250_000},
    )


def _gate(run: RunRecord, asset: str, expires_at: datetime | None = None) -> Gate:
    return Gate(
        token_hash=uuid.uuid4().hex + uuid.uuid4().hex,
        pipeline=run.pipeline,
        run_id=run.run_id,
        asset=asset,
        partition=DAY,
        status="pending",
        created_at=_now(),
        expires_at=expires_at,
        metadata={"job": "embed-42"},
    )


def _try(call: Callable[[], T], error: type[BaseException]) -> T | None:
    try:
        return call()
    except error:
        return None
