"""What a user sees when the workers do not serve their pipeline (issue 14 items 2 and 16).

One real worker serves the quickstart and faults pipelines on a queue of its own; the client
runs the ETL pipeline on that queue, which no worker serves.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery_it import PIPELINES, Cluster, cli, purge_redis, wait_for

pytestmark = pytest.mark.integration

SERVED = f"{PIPELINES / 'quickstart'}.py:pipeline"
SLOW = f"{PIPELINES / 'faults'}.py:pipeline"
NOT_SERVED = f"{PIPELINES / 'etl'}.py:pipeline"


def _client(cluster: Cluster, queue: str | None = None) -> dict[str, str]:
    return {"FLOWSTONE_BROKER_URL": cluster.broker, "FLOWSTONE_QUEUE": queue or cluster.queue}


@pytest.fixture(scope="module")
def quickstart_only(client_env: str, database_url: str, redis_url: str,
                    state_dir: Path) -> Iterator[Cluster]:
    # a Redis database of its own: the question is broadcast to every worker on the
    # broker, and the other suites' workers serve these pipelines too
    broker = redis_url.rsplit("/", 1)[0] + "/12"
    queue = f"{client_env}-presence-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(broker, queue, database_url, state_dir, specs=[SERVED, SLOW])
    try:
        cluster.start("p1", concurrency=1)
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


def test_a_worker_logs_each_engine_warning_once(quickstart_only: Cluster) -> None:
    proc = quickstart_only.procs[0][0]
    done = cli("run", NOT_SERVED, "daily_revenue", "-p", "2024-01-05", "--force", "--timeout", "6",
               env=_client(quickstart_only))
    assert done.returncode == 1, done.stderr  # cancelled at the timeout: nobody ran it
    marker = "dropping step message for unknown pipeline 'it_etl'"
    wait_for(lambda: marker in quickstart_only.log_of(proc), what="the worker's error line")
    lines = [line for line in quickstart_only.log_of(proc).splitlines() if marker in line]
    assert len(lines) == 1, "\n".join(lines)


def test_run_says_within_seconds_that_no_worker_serves_the_pipeline(
    quickstart_only: Cluster,
) -> None:
    done = cli("run", NOT_SERVED, "daily_revenue", "-p", "2024-01-06", "--force", "--timeout", "8",
               env=_client(quickstart_only))
    assert done.returncode == 1  # nobody ran it: cancelled at the timeout
    assert "no live worker serves pipeline 'it_etl'" in done.stderr, done.stderr
    assert f"flowstone worker --pipeline {NOT_SERVED}" in done.stderr
    assert "timed out after 8s" in done.stdout


def test_a_worker_of_another_queue_does_not_count(quickstart_only: Cluster) -> None:
    """The worker serves it_quickstart, but from its own queue: not from this one."""
    empty = f"{quickstart_only.queue}-nobody"
    try:
        done = cli("run", SERVED, "--force", "--timeout", "6", env=_client(quickstart_only, empty))
    finally:
        purge_redis(redis.Redis.from_url(quickstart_only.broker), empty)
    assert done.returncode == 1
    assert "no live worker serves pipeline 'it_quickstart'" in done.stderr, done.stderr


def test_run_with_a_serving_worker_says_nothing_about_workers(quickstart_only: Cluster) -> None:
    done = cli("run", SERVED, "--force", env=_client(quickstart_only))
    assert done.returncode == 0, done.stderr
    assert "no live worker" not in done.stderr


def test_run_on_a_terminal_shows_a_progress_line(quickstart_only: Cluster) -> None:
    """stderr is a pseudo-terminal: the line shows the steps done and the running asset."""
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = {**os.environ, **_client(quickstart_only), "FLOWSTONE_IT_SLOW_SECONDS": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "flowstone", "run", SLOW, "after_slow",
                             "--force"], stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "1/3 steps, running: slow" in text, text
    assert "run " in out.decode() and "succeeded" in out.decode()
