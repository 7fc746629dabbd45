"""Fixtures: a throwaway Postgres database, unique broker queues, real worker processes.

Services (defaults match the development machine; override with the variables):
  FLOWSTONE_IT_PG      postgresql://postgres@127.0.0.1:5432/postgres (admin connection)
  FLOWSTONE_IT_REDIS   redis://127.0.0.1:6379/11 (a database of its own, never 0)
  FLOWSTONE_IT_RABBIT  amqp://guest:guest@127.0.0.1:5672//
An unreachable service skips its tests (with how to start it), or fails them when CI=true.

Hygiene: every queue, worker name and test key of a session carries its SESSION id
(test pipelines prefix their own Redis keys with FLOWSTONE_IT_KEYS); each cluster purges
its queue's keys, bindings and unacknowledged messages when it stops, and the session
deletes its FLOWSTONE_IT_KEYS keys at the end and checks nothing of it is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_it import Cluster

PG_ADMIN = os.environ.get("FLOWSTONE_IT_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("FLOWSTONE_IT_REDIS", "redis://127.0.0.1:6379/11")
RABBIT = os.environ.get("FLOWSTONE_IT_RABBIT", "amqp://guest:guest@127.0.0.1:5672//")
SESSION = uuid.uuid4().hex[:10]


def unavailable(what: str, how: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc}); start it: {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _pg(sql: str, database: str = "postgres") -> None:
    import asyncpg

    async def go() -> None:
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + database
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database with the FlowStone schema, dropped at the end of the session."""
    name = f"flowstone_it_{SESSION}"
    try:
        _pg(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        unavailable("PostgreSQL", "docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust "
                    "postgres:15", exc)
    url = "postgresql+asyncpg://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    from flowstone_io_postgres import PostgresRunStore

    store = PostgresRunStore(url, auto_migrate=True)
    store.ping()
    store.list_runs(limit=1)
    store.close()
    yield url
    with contextlib.suppress(Exception):
        _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_timeout=3).ping()
    except Exception as exc:
        unavailable("Redis", "docker run -p 6379:6379 redis:7", exc)
    yield REDIS


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    from kombu import Connection

    try:
        with Connection(RABBIT, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        unavailable("RabbitMQ", "docker run -p 5672:5672 rabbitmq:3", exc)
    return RABBIT


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flowstone-it")


@pytest.fixture(scope="session")
def client_env(database_url: str, redis_url: str, state_dir: Path) -> Iterator[str]:
    """This test process as a client: the pipeline files load unchanged, configured only
    by the environment (FLOWSTONE_EXECUTOR=celery + broker + store)."""
    queue = f"fs-it-{SESSION}"
    keys = f"fs-it:{SESSION}:"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWSTONE_EXECUTOR", "celery")
        mp.setenv("FLOWSTONE_BROKER_URL", redis_url)
        mp.setenv("FLOWSTONE_QUEUE", queue)
        mp.setenv("FLOWSTONE_DATABASE_URL", database_url)
        mp.setenv("FLOWSTONE_IT_DIR", str(state_dir))
        mp.setenv("FLOWSTONE_IT_KEYS", keys)  # test pipelines' own Redis keys start with it
        yield queue
    import redis
    from celery_it import purge_redis, redis_leftovers

    r = redis.Redis.from_url(redis_url)
    # everything named after this session: the test pipelines' keys (FLOWSTONE_IT_KEYS) and
    # any queue a worker of this session declared for itself (presence, replies)
    purge_redis(r, SESSION)
    left = redis_leftovers(r, SESSION)
    assert not left, f"this session left Redis keys behind: {left[:10]}"


@pytest.fixture(scope="session")
def redis_cluster(client_env: str, database_url: str, redis_url: str,
                  state_dir: Path) -> Iterator[Cluster]:
    cluster = Cluster(redis_url, client_env, database_url, state_dir)
    try:
        cluster.start("w1")
        cluster.start("w2")
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


@pytest.fixture(scope="session")
def rabbit_cluster(client_env: str, database_url: str, rabbit_url: str,
                   state_dir: Path) -> Iterator[Cluster]:
    cluster = Cluster(rabbit_url, f"fs-it-rmq-{SESSION}", database_url, state_dir)
    try:
        cluster.start("r1")
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


@pytest.fixture
def seed_dir(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory where a test's pipeline module writes its side effects (what ran,
    how often), announced to the client and the workers as ``FLOWSTONE_IT_SEED_DIR``."""
    path = state_dir / f"seed-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    monkeypatch.setenv("FLOWSTONE_IT_SEED_DIR", str(path))
    return path


@pytest.fixture
def own_cluster(client_env: str, database_url: str, redis_url: str,
                state_dir: Path) -> Iterator[Cluster]:
    """Workers on a queue of their own, for tests that kill or stop them."""
    cluster = Cluster(redis_url, f"fs-it-own-{uuid.uuid4().hex[:8]}", database_url, state_dir)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Parametrize with "redis" / "rabbitmq": yields a function that points a loaded
    pipeline at that broker's workers for the test."""
    kind = request.param
    cluster: Cluster = request.getfixturevalue(
        "redis_cluster" if kind == "redis" else "rabbit_cluster")
    swapped: list[tuple[Any, Any]] = []

    def use(pipeline: Any) -> Any:
        if kind == "redis":
            return pipeline
        from flowstone_celery import CeleryExecutor, load_settings

        swapped.append((pipeline, pipeline.executor))
        pipeline.executor = CeleryExecutor(
            load_settings(broker_url=cluster.broker, queue=cluster.queue))
        return pipeline

    yield use
    for pipeline, original in swapped:
        pipeline.executor.close()
        pipeline.executor = original


