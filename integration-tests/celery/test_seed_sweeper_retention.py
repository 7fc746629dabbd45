"""Seed: route-decision retention in the distributed runtime (seed 001 section 10; DESIGN.md
section 8), and the other time limits the stores keep (approval and signal-gate timeouts).

The Celery sweeper of a worker is what enforces them there: a real ``Sweeper`` over a
Postgres run store is swept at a time past each limit, and the records must be gone (route
decisions) or expired (approvals, gates).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=1)


@pytest.fixture
def swept(database_url: str, redis_url: str) -> Iterator[tuple[Any, Any, dict[str, str]]]:
    """``(pipeline, sweeper, tokens)``: a pipeline with a router, an approval and a signal
    gate on the Postgres store, served by a Celery app whose sweeper the test drives."""
    import flowstone as fs
    from flowstone_celery import load_settings, make_app
    from flowstone_celery.sweeper import Sweeper

    tokens: dict[str, str] = {}

    @fs.router(branches=["small", "large"])
    def size(order: int) -> str:
        return "small" if order < 100 else "large"

    @fs.asset
    def order() -> int:
        return 7

    @fs.asset(routed_from="size")
    def small(order: int) -> int:
        return order

    @fs.asset(routed_from="size")
    def large(order: int) -> int:
        return order

    @fs.asset
    def trade(order: int) -> fs.WaitForApproval:
        return fs.WaitForApproval(message="check", value=order, timeout=timedelta(minutes=5))

    @fs.asset(on_signal=lambda context, payload: payload)
    def transcode(context: fs.Context) -> fs.SignalGate:
        gate = context.signal_gate(timeout=timedelta(minutes=5))
        tokens["transcode"] = gate.token
        return gate

    tag = uuid.uuid4().hex[:8]
    # in-process runs: the suite's client env (FLOWSTONE_EXECUTOR=celery, its own queue) must
    # not send these runs to workers that do not serve this pipeline (they would wait forever)
    pipeline = fs.Pipeline(f"seed_retention_{tag}", [order, size, small, large, trade, transcode],
                           store=database_url, route_retention=RETENTION.total_seconds(),
                           executor="inprocess")
    app = make_app(load_settings(broker_url=redis_url, queue=f"fs-it-seed-ret-{tag}"))
    try:
        yield pipeline, (app, Sweeper(app)), tokens
    finally:
        app.close_pipelines()
        app.close()
        pipeline.close()


def test_seed_the_sweeper_prunes_decisions_and_expires_waits(
    swept: tuple[Any, Any, dict[str, str]],
) -> None:
    """Seed 001 section 10: decisions do not accumulate; waits do not outlive their timeout."""
    pipeline, (app, sweeper), tokens = swept
    routed = pipeline.run("small")
    assert routed.status == "succeeded" and routed.value == 7
    waiting = pipeline.run(["trade", "transcode"])
    assert waiting.status == "waiting"
    store = pipeline.store
    assert store.get_route_decision(routed.run_id, "size", "") == "small"
    token_hash = hashlib.sha256(tokens["transcode"].encode()).hexdigest()
    assert [a.asset for a in pipeline.approvals()] == ["trade"]
    app.add_pipeline(pipeline)  # served by this app's worker side, as a worker does

    now = datetime.now(UTC)
    early = sweeper.sweep(now + timedelta(minutes=1))  # within every limit: nothing changes
    assert early.swept == (pipeline.name,) and early.errors == 0
    assert store.get_route_decision(routed.run_id, "size", "") == "small"
    assert [a.asset for a in pipeline.approvals()] == ["trade"]

    sweeper.sweep(now + timedelta(minutes=10))  # past both wait timeouts
    assert pipeline.approvals() == []
    gate = store.get_gate(token_hash)
    assert gate is not None and gate.status == "expired"
    assert store.get_route_decision(routed.run_id, "size", "") == "small"  # still retained

    late = sweeper.sweep(now + RETENTION + timedelta(minutes=5))  # past the retention
    assert late.errors == 0
    assert store.get_route_decision(routed.run_id, "size", "") is None
