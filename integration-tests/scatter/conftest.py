"""Fixtures for the scatter integration tests: the Celery suite's throwaway database and
broker fixtures, plus worker processes that serve ``pipelines/scatter_it.py``."""

from __future__ import annotations

import importlib.util
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

_spec = importlib.util.spec_from_file_location("celery_it_conftest", CELERY_IT / "conftest.py")
assert _spec is not None and _spec.loader is not None
_celery_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_celery_conftest)
database_url = _celery_conftest.database_url
redis_url = _celery_conftest.redis_url
state_dir = _celery_conftest.state_dir
client_env = _celery_conftest.client_env

SPEC = f"{Path(__file__).parent / 'pipelines' / 'scatter_it.py'}:pipeline"
SCHEMA_SPEC = f"{Path(__file__).parent / 'pipelines' / 'scatter_schema.py'}:pipeline"


class ScatterCluster(Cluster):
    """Workers serving the scatter pipeline on a queue of their own."""

    def start(self, name: str, *, concurrency: int = 2, spec: str = SPEC,
              **env: str) -> subprocess.Popen[bytes]:
        log = self.state_dir / f"{self.queue}-{name}.log"
        cmd = [sys.executable, "-m", "flowstone", "worker", "--pipeline", spec,
               "--concurrency", str(concurrency), "--hostname", f"{name}-{self.queue}@%h",
               "--", "--without-mingle", "--without-gossip"]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env={**self.env, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        return proc


def load_pipeline(queue: str, spec: str = SPEC) -> Any:
    from flowstone.loading import load_pipeline as load
    from flowstone_celery import CeleryExecutor, load_settings

    pipeline = load(spec)
    pipeline.use_executor(CeleryExecutor(load_settings(queue=queue)))
    return pipeline


@pytest.fixture
def cluster(client_env: str, database_url: str, redis_url: str,
            state_dir: Path) -> Iterator[ScatterCluster]:
    """Workers on a queue of their own (each test starts the ones it needs)."""
    c = ScatterCluster(redis_url, f"fs-it-scatter-{uuid.uuid4().hex[:8]}", database_url,
                       state_dir)
    try:
        yield c
    finally:
        c.stop_all()
        c.purge()
