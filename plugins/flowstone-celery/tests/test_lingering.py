"""Dispatch linger (``FLOWSTONE_DISPATCH_LINGER_SECONDS``, ``flowstone_celery.lingering``):
behind a queue that fills every slot, runs started one after the other share one message,
at most ``FLOWSTONE_PACK_STEPS`` steps to it, published once the linger is over, when the
message is full, or when the executor closes; a worker running that message records every
run once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import drain
from test_packing import bodies, independent

import flowstone as fs
from flowstone_celery import CelerySettings, FlowstoneCelery, make_app
from flowstone_celery.packing import BACKLOG_SECONDS
from flowstone_celery.tasks import handle_step

SMALL = ["p00", "p01", "p02"]


def lingering(settings: CelerySettings, seconds: float) -> FlowstoneCelery:
    return make_app(settings.model_copy(update={
        "worker_slots": 4, "pack_steps": 8, "inline_steps": 0, "dispatch_linger_seconds": seconds,
    }))  # fmt: skip


@pytest.fixture
def backlogged(settings: CelerySettings) -> Iterator[tuple[FlowstoneCelery, fs.Pipeline]]:
    """An app whose queue holds four messages (a run of 16 ready steps on 4 slots), the
    queue length read fresh; steps linger a minute unless a test says otherwise."""
    app = lingering(settings, 60.0)
    pipeline = independent(16)
    app.add_pipeline(pipeline)
    pipeline.run(wait=False, force=True)
    time.sleep(BACKLOG_SECONDS)
    assert app.executor.backlog() == 4
    yield app, pipeline
    app.close_pipelines()
    app.close()


def started(pipeline: fs.Pipeline, n: int) -> list[str]:
    return [pipeline.run(SMALL, wait=False, force=True).run_id for _ in range(n)]


def test_runs_started_behind_a_full_queue_share_a_message_once_the_linger_is_over(
    settings: CelerySettings,
) -> None:
    app = lingering(settings, 0.2)
    pipeline = independent(16)
    app.add_pipeline(pipeline)
    try:
        assert started(pipeline, 1) and [len(b) for b in bodies(drain(app))] == [1, 1, 1]
        pipeline.run(wait=False, force=True)  # idle until now: published at once
        time.sleep(BACKLOG_SECONDS)
        runs = started(pipeline, 2)
        assert [len(b) for b in bodies(drain(app))] == [4, 4, 4, 4]  # the two runs linger
        time.sleep(0.5)
        (message,) = bodies(drain(app))
        assert [(m["run_id"], m["asset"]) for m in message] == [
            (run, asset) for run in runs for asset in SMALL
        ]
        for body in [message]:
            handle_step(app, body)  # a pack of two runs: each step claimed and recorded
        assert [pipeline.result(r).status for r in runs] == ["succeeded"] * 2
        assert {s.attempt for r in runs for s in pipeline.store.list_steps(r)} == {1}
    finally:
        app.close_pipelines()
        app.close()


def test_a_full_message_goes_at_once(backlogged: tuple[FlowstoneCelery, fs.Pipeline]) -> None:
    app, pipeline = backlogged
    drain(app)
    runs = started(pipeline, 3)  # 9 steps, 8 to a message: the third run's would overflow
    (message,) = bodies(drain(app))
    assert {m["run_id"] for m in message} == set(runs[:2]) and len(message) == 6
    assert len(app.executor._linger or ()) == 3


def test_closing_the_executor_publishes_what_lingers(
    backlogged: tuple[FlowstoneCelery, fs.Pipeline],
) -> None:
    app, pipeline = backlogged
    drain(app)
    (run,) = started(pipeline, 1)
    assert drain(app) == []
    app.executor.close()
    (message,) = bodies(drain(app))
    assert [(m["run_id"], m["asset"]) for m in message] == [(run, a) for a in SMALL]


def test_no_linger_when_turned_off(settings: CelerySettings) -> None:
    app = lingering(settings, 0.0)
    pipeline = independent(16)
    app.add_pipeline(pipeline)
    try:
        pipeline.run(wait=False, force=True)
        time.sleep(BACKLOG_SECONDS)
        run = pipeline.run(SMALL, wait=False, force=True)  # behind a full queue: packed
        published: list[Any] = bodies(drain(app))
        assert [len(b) for b in published] == [4, 4, 4, 4, 3]
        assert [m["run_id"] for m in published[-1]] == [run.run_id] * 3
    finally:
        app.close_pipelines()
        app.close()
