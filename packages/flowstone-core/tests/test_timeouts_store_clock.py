"""Parallel branch timeouts read the run store's clock, not the process's (issue 11, defect 3).

The memory and SQLite stores' ``clock`` is the one place their scheduling reads the time;
the branch clock uses it too. Here the store's clock is moved while the process's is not:
the branch's start is the store's time, and it expires when the store's clock says so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import PipelineFactory

import flowstone as fs
from flowstone.engine.timeouts import CLOCK_NOTE, mark_branch_started, store_clock
from flowstone.testing import ParkedExecutor


@fs.asset
def maps() -> str:
    return "maps"


@fs.asset(parallel=fs.Parallel(branches={"maps": "maps"}, mode="partial", timeout=60))
def front_page(branches: dict[str, Any]) -> str:
    return repr(branches["maps"])


def test_branch_start_and_expiry_follow_the_store_clock(make_pipeline: PipelineFactory) -> None:
    parked = ParkedExecutor()
    p = make_pipeline([maps, front_page], executor=parked)
    start = datetime(2030, 1, 1, tzinfo=UTC)  # far from the process's clock
    moments = [start]
    p.store.clock = lambda: moments[-1]  # type: ignore[attr-defined]
    assert store_clock(p.runtime.capabilities.store_clock) == start
    run = p.run("front_page", wait=False)
    step = parked.take()[0]
    assert p.store.claim_step(run.run_id, step.asset, "", owner="w1", lease_seconds=600)

    mark_branch_started(p.runner, run.run_id, "maps")
    assert p.store.get_step_note(run.run_id, "front_page", "", CLOCK_NOTE) == start.isoformat()
    moments.append(start + timedelta(seconds=59))
    assert p.expire_due() == 0  # 59 s by the store's clock
    moments.append(start + timedelta(seconds=61))
    assert p.expire_due() == 1  # 61 s by the store's clock: late
    assert p.store.get_step(run.run_id, "maps", "").state == "failed"


def test_a_store_without_a_clock_falls_back_to_the_process_clock() -> None:
    before = datetime.now(UTC)
    assert before <= store_clock(None) <= datetime.now(UTC)
