"""Fixtures for the observability integration tests.

Own resources: a throwaway Postgres database (the Celery suite's fixture), a Redis
database of its own (``FLOWSTONE_IT_REDIS_OBS``, default db 13: Celery's worker pings are
per Redis database, so "no worker running" is not answered by other suites' workers), a
queue of its own, and worker processes that are stopped at the end. Services missing:
skip, or fail when CI=true.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CELERY_IT = Path(__file__).parent.parent / "celery"
sys.path.insert(0, str(CELERY_IT))

from celery_it import Cluster  # noqa: E402

_spec = importlib.util.spec_from_file_location("celery_it_conftest_obs", CELERY_IT / "conftest.py")
assert _spec is not None and _spec.loader is not None
_celery_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_celery_conftest)
database_url = _celery_conftest.database_url
state_dir = _celery_conftest.state_dir
unavailable = _celery_conftest.unavailable

SPEC = f"{Path(__file__).parent / 'pipelines' / 'obs_it.py'}:pipeline"
REDIS = os.environ.get("FLOWSTONE_IT_REDIS_OBS", "redis://127.0.0.1:6379/13")
_URL = re.compile(rb"metrics on (http://127\.0\.0\.1:\d+)/metrics")


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_timeout=3).ping()
    except Exception as exc:
        unavailable("Redis", "docker run -p 6379:6379 redis:7", exc)
    return REDIS


class MetricsCluster(Cluster):
    """Workers serving ``obs_it.py`` with ``--metrics-port 0`` on a queue of their own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, specs=[SPEC], **kwargs)
        self.urls: dict[str, str] = {}

    def start(self, name: str, *, concurrency: int = 2, **env: str) -> subprocess.Popen[bytes]:
        log = self.state_dir / f"{self.queue}-{name}.log"
        cmd = [sys.executable, "-m", "flowstone", "worker", "--pipeline", SPEC,
               "--concurrency", str(concurrency), "--hostname", f"{name}-{self.queue}@%h",
               "--metrics-port", "0", "--", "--without-mingle", "--without-gossip"]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env={**self.env, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes() or not _URL.search(log.read_bytes()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        found = _URL.search(log.read_bytes())
        assert found is not None
        self.urls[name] = found.group(1).decode()
        return proc


@pytest.fixture(scope="session")
def queue() -> str:
    return f"fs-it-obs-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def client_env(database_url: str, redis_url: str, state_dir: Path, queue: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWSTONE_EXECUTOR", "celery")
        mp.setenv("FLOWSTONE_BROKER_URL", redis_url)
        mp.setenv("FLOWSTONE_QUEUE", queue)
        mp.setenv("FLOWSTONE_DATABASE_URL", database_url)
        mp.setenv("FLOWSTONE_IT_DIR", str(state_dir))
        yield queue


@pytest.fixture(scope="session")
def multiproc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A metrics directory with a stale file a previous run left (must be cleaned)."""
    path = tmp_path_factory.mktemp("prom-multiproc")
    (path / "counter_99999.db").write_bytes(b"stale values of an earlier run")
    return path


@pytest.fixture(scope="session")
def cluster(client_env: str, database_url: str, redis_url: str, state_dir: Path,
            multiproc_dir: Path) -> Iterator[MetricsCluster]:
    c = MetricsCluster(redis_url, client_env, database_url, state_dir)
    try:
        c.start("m1", PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir), FLOWSTONE_LOG_FORMAT="json")
        yield c
    finally:
        c.stop_all()
        c.purge()
