"""What a user sees when the workers do not serve their pipeline (issue 14 items 2 and 16).

One real worker serves only the quickstart pipeline on a queue of its own; the client runs
the ETL pipeline on that queue, which no worker serves.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_it import PIPELINES, Cluster, cli, wait_for

pytestmark = pytest.mark.integration

SERVED = f"{PIPELINES / 'quickstart'}.py:pipeline"
NOT_SERVED = f"{PIPELINES / 'etl'}.py:pipeline"


@pytest.fixture(scope="module")
def quickstart_only(client_env: str, database_url: str, redis_url: str,
                    state_dir: Path) -> Iterator[Cluster]:
    queue = f"{client_env}-presence-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(redis_url, queue, database_url, state_dir, specs=[SERVED])
    try:
        cluster.start("p1", concurrency=1)
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


def test_a_worker_logs_each_engine_warning_once(quickstart_only: Cluster) -> None:
    proc = quickstart_only.procs[0][0]
    done = cli("run", NOT_SERVED, "daily_revenue", "-p", "2024-01-05", "--timeout", "6",
               env={"FLOWSTONE_QUEUE": quickstart_only.queue})
    assert done.returncode == 1, done.stderr  # cancelled at the timeout: nobody ran it
    marker = "dropping step message for unknown pipeline 'it_etl'"
    wait_for(lambda: marker in quickstart_only.log_of(proc), what="the worker's error line")
    lines = [line for line in quickstart_only.log_of(proc).splitlines() if marker in line]
    assert len(lines) == 1, "\n".join(lines)
