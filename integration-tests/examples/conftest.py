"""Fixtures: the Celery suite's throwaway database, broker checks and client environment,
with workers that serve every pipeline in ``examples/``."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CELERY_IT = HERE.parent / "celery"
EXAMPLES = HERE.parents[1] / "examples"
sys.path.insert(0, str(CELERY_IT))  # celery_it: Cluster

from celery_it import Cluster  # noqa: E402

# Reuse the Celery suite's service fixtures as they are (one definition, no copy).
_spec = importlib.util.spec_from_file_location("_celery_it_conftest_ex", CELERY_IT / "conftest.py")
assert _spec is not None and _spec.loader is not None
_celery_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_celery_conftest)
database_url = _celery_conftest.database_url
redis_url = _celery_conftest.redis_url
state_dir = _celery_conftest.state_dir
client_env = _celery_conftest.client_env

SPECS = sorted(f"{path}:pipeline" for path in EXAMPLES.glob("*.py"))


@pytest.fixture(scope="session")
def outbox(state_dir: Path) -> Path:
    """The signal_gate example's outbox, shared by the workers and this process."""
    return state_dir / "embedding-outbox"


@pytest.fixture(scope="session")
def cluster(
    client_env: str, database_url: str, redis_url: str, state_dir: Path, outbox: Path
) -> Iterator[Cluster]:
    """Two workers serving every example, on the client's queue."""
    c = Cluster(redis_url, client_env, database_url, state_dir, specs=SPECS)
    try:
        c.start("x1", EMBEDDING_OUTBOX=str(outbox))
        c.start("x2", EMBEDDING_OUTBOX=str(outbox))
        yield c
    finally:
        c.stop_all()
        c.purge()
