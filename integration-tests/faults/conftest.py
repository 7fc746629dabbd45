"""Fixtures of the fault suite: a Postgres database per test module, a Redis database of
the suite's own, a queue and two fresh worker processes per test.

Services (override with the variables):
  FLOWSTONE_IT_PG            postgresql://postgres@127.0.0.1:5432/postgres (admin connection)
  FLOWSTONE_IT_REDIS_FAULTS  redis://127.0.0.1:6379/14 -- the suite's own database: the
                             Redis fault flushes it, so no other suite may use it
An unreachable service skips the suite (with how to start it), or fails it when CI=true.

Hygiene: every database, queue and worker name carries the session id; each test's
workers are stopped and their queue's keys purged when it ends, runs it left going are
cancelled, and each module's database is dropped at the module's end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from faults_it import DAG_SPEC, Workers, client, sql

PG_ADMIN = os.environ.get("FLOWSTONE_IT_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("FLOWSTONE_IT_REDIS_FAULTS", "redis://127.0.0.1:6379/14")
SESSION = uuid.uuid4().hex[:8]


# The Celery suite's service helpers, as they are (one definition, no copy).
_spec = importlib.util.spec_from_file_location("_faults_celery_conftest",
                                               Path(__file__).parent.parent / "celery"
                                               / "conftest.py")
assert _spec is not None and _spec.loader is not None
_celery_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_celery_conftest)
unavailable = _celery_conftest.unavailable
_admin = _celery_conftest._pg
state_dir = _celery_conftest.state_dir
_celery_conftest.REDIS = REDIS  # its redis_url fixture checks (and yields) the suite's own
redis_url = _celery_conftest.redis_url


@pytest.fixture(scope="session", autouse=True)
def _audit_connection() -> Iterator[None]:
    """This process writes audit rows too (``on_signal`` and the approval hook run in the
    client that signals or approves); its connection is closed at the end."""
    yield
    from fault_dag import AUDIT

    AUDIT.close()


@pytest.fixture(scope="module")
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for this test module: FlowStone's schema plus the audit table."""
    name = f"flowstone_faults_{SESSION}_{request.module.__name__.removeprefix('test_')}"[:63]
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        unavailable("PostgreSQL", "docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust "
                    "postgres:15", exc)
    url = "postgresql+asyncpg://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    try:
        from fault_dag import AUDIT_DDL

        from flowstone_io_postgres import PostgresRunStore

        store = PostgresRunStore(url, auto_migrate=True)
        store.ping()
        store.close()
        sql(url, AUDIT_DDL)
        yield url
    finally:  # also when setting it up failed
        with contextlib.suppress(Exception):
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def queue(database_url: str, redis_url: str, state_dir: Path) -> Iterator[str]:
    """A queue of this test; this process is its client (configured by the environment)."""
    name = f"fs-faults-{SESSION}-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWSTONE_EXECUTOR", "celery")
        mp.setenv("FLOWSTONE_BROKER_URL", redis_url)
        mp.setenv("FLOWSTONE_QUEUE", name)
        mp.setenv("FLOWSTONE_DATABASE_URL", database_url)
        mp.setenv("FLOWSTONE_IT_DIR", str(state_dir))
        yield name


@pytest.fixture
def workers(queue: str, database_url: str, redis_url: str, state_dir: Path,
            request: pytest.FixtureRequest) -> Iterator[Workers]:
    """No worker yet: each test starts the ones it needs (``workers.start_many``)."""
    specs = getattr(request, "param", None) or [DAG_SPEC]
    cluster = Workers(redis_url, queue, database_url, state_dir, specs=specs)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


@pytest.fixture
def dag(queue: str, workers: Workers) -> Iterator[Any]:
    """The fault DAG as this test's client, on the test's queue; runs the test leaves
    going are cancelled at its end."""
    from fault_dag import make_pipeline

    with client(make_pipeline()) as pipeline:
        yield pipeline
