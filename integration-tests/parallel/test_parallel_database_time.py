"""Parallel branch timeouts run on the database's clock (issue 11, defect 3), on real Postgres.

A runner whose process clock is 400 s fast is simulated in this process: the engine's and
the stores' clock functions, and the ``datetime`` the timeout code reads, are patched to
run 400 s ahead while that "runner" sweeps. Both ends of a branch's clock are read from the
database, so that runner cannot expire a 60 s branch that started a moment ago; the branch
does expire once it is really late (the override a test passes stands for that).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import flowstone as fs
from flowstone import store_rules
from flowstone.engine import runner as engine_runner
from flowstone.engine import timeouts
from flowstone.engine.timeouts import CLOCK_NOTE, mark_branch_started
from flowstone.testing import ParkedExecutor
from flowstone_io_postgres import PostgresRunStore
from flowstone_io_postgres import store as store_module

pytestmark = pytest.mark.integration

SKEW_S = 400.0


class _Fast(datetime):
    """``datetime`` whose ``now()`` runs SKEW_S ahead, as on a worker with a wrong clock."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(seconds=SKEW_S)


def _skew(monkeypatch: pytest.MonkeyPatch) -> None:
    def fast() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=SKEW_S)

    monkeypatch.setattr(timeouts, "datetime", _Fast)
    monkeypatch.setattr(store_rules, "utc_now", fast)
    monkeypatch.setattr(store_module, "_now", fast)
    monkeypatch.setattr(engine_runner, "_now", fast)


@fs.asset
def maps() -> str:
    return "maps"


@fs.asset(parallel=fs.Parallel(branches={"maps": "maps"}, mode="partial", timeout=60))
def front_page(branches: dict[str, Any]) -> str:
    return repr(branches["maps"])


@pytest.fixture
def pipeline(database_url: str) -> Iterator[Any]:
    store = PostgresRunStore(database_url, pool_size=2, max_overflow=0)
    p = fs.Pipeline(
        f"par_time_{uuid.uuid4().hex[:8]}",
        [maps, front_page],
        store=store,
        executor=ParkedExecutor(),
    )
    yield p
    p.close()
    store.close()


def _started(pipeline: Any) -> str:
    """Run ``front_page`` (its branch ``maps`` claimed by a worker); return the run id."""
    run = pipeline.run("front_page", wait=False)
    step = pipeline.executor.take()[0]
    assert step.asset == "maps"
    assert pipeline.store.claim_step(run.run_id, "maps", "", owner="w-ok", lease_seconds=600)
    return str(run.run_id)


def test_a_fast_sweeper_does_not_expire_a_branch_early(
    pipeline: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = _started(pipeline)
    mark_branch_started(pipeline.runner, run_id, "maps")  # by a runner with a right clock
    with monkeypatch.context() as m:
        _skew(m)
        # the 60 s branch started a moment ago by the database's clock. Before the fix the
        # fast sweeper expired it: its process clock said 400 s had passed.
        assert pipeline.expire_due() == 0
        assert pipeline.store.get_step(run_id, "maps", "").state == "running"
    late = pipeline.store.clock() + timedelta(seconds=61)
    assert pipeline.expire_due(late) == 1  # once really late, it is expired
    assert pipeline.store.get_step(run_id, "maps", "").state == "failed"


def test_a_fast_runner_stamps_the_branch_start_with_the_database_time(
    pipeline: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = _started(pipeline)
    with monkeypatch.context() as m:
        _skew(m)
        mark_branch_started(pipeline.runner, run_id, "maps")  # the fast runner runs the branch
    started = datetime.fromisoformat(
        pipeline.store.get_step_note(run_id, "front_page", "", CLOCK_NOTE)
    )
    # the database's time, not 400 s ahead (before the fix: a start in the future, so the
    # branch would have expired 400 s late)
    assert started <= pipeline.store.clock()
    late = pipeline.store.clock() + timedelta(seconds=61)
    assert pipeline.expire_due(late) == 1
    assert pipeline.store.get_step(run_id, "maps", "").state == "failed"
