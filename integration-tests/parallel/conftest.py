"""Fixtures: the Celery suite's throwaway database, broker checks and client environment,
with worker processes that serve this suite's pipelines."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CELERY_IT = HERE.parent / "celery"
sys.path.insert(0, str(CELERY_IT))  # celery_it: Cluster, wait_for

from celery_it import Cluster  # noqa: E402

# Reuse the Celery suite's service fixtures as they are (one definition, no copy).
_spec = importlib.util.spec_from_file_location("_celery_it_conftest", CELERY_IT / "conftest.py")
assert _spec is not None and _spec.loader is not None
_celery_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_celery_conftest)
database_url = _celery_conftest.database_url
redis_url = _celery_conftest.redis_url
state_dir = _celery_conftest.state_dir
client_env = _celery_conftest.client_env

SPECS = [f"{HERE / 'pipelines' / 'newsroom.py'}:pipeline"]


@pytest.fixture(scope="session")
def cluster(client_env: str, database_url: str, redis_url: str,
            state_dir: Path) -> Iterator[Cluster]:
    """Two workers (two children each) on the client's queue."""
    c = Cluster(redis_url, client_env, database_url, state_dir, specs=SPECS)
    try:
        c.start("p1")
        c.start("p2")
        yield c
    finally:
        c.stop_all()
        c.purge()


@pytest.fixture
def own_cluster(client_env: str, database_url: str, redis_url: str,
                state_dir: Path) -> Iterator[Cluster]:
    """Workers on a queue of their own, for tests that kill them."""
    c = Cluster(redis_url, f"fs-it-par-{uuid.uuid4().hex[:8]}", database_url, state_dir,
                specs=SPECS)
    try:
        yield c
    finally:
        c.stop_all()
        c.purge()
