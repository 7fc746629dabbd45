"""The integration tests clean up after themselves and say when the server is too busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from celery_it import PIPELINES, Cluster, cli, redis_leftovers

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_a_cluster_leaves_nothing_on_redis(
    client_env: str, database_url: str, redis_url: str, state_dir: Path
) -> None:
    assert not redis_url.endswith("/0"), "integration tests use a Redis database of their own"
    queue = f"fs-it-hygiene-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(redis_url, queue, database_url, state_dir)
    r = redis.Redis.from_url(redis_url)
    try:
        cluster.start("h1", concurrency=1)
        done = cli("run", f"{PIPELINES / 'quickstart'}.py:pipeline", "total", "--force",
                   "--json", env={"FLOWSTONE_QUEUE": queue})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["value"] == 30
        assert redis_leftovers(r, queue), "the queue should exist while its worker runs"
    finally:
        cluster.stop_all()
        cluster.purge()  # raises if anything of the queue is left
    assert redis_leftovers(r, queue) == []


def test_a_busy_postgres_is_named_at_the_start_not_deep_in_a_test() -> None:
    env = {
        **os.environ,
        "FLOWSTONE_IT_PG_HEADROOM": "1000000",  # more than any server allows
        "FLOWSTONE_IT_PG_WAIT": "0",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "-q",
            str(ROOT / "integration-tests" / "postgres"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "free connections" in output and "need 1000000" in output
    assert "FLOWSTONE_IT_PG_HEADROOM" in output
