"""Fixtures: a throwaway Postgres database, unique broker queues, real worker processes.

Services (defaults match the development machine; override with the variables):
  FLOWSTONE_IT_PG      postgresql://postgres@127.0.0.1:5432/postgres (admin connection)
  FLOWSTONE_IT_REDIS   redis://127.0.0.1:6379/0
  FLOWSTONE_IT_RABBIT  amqp://guest:guest@127.0.0.1:5672//
An unreachable service skips its tests (with how to start it), or fails them when CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
PIPELINES = HERE / "pipelines"
SPECS = [f"{PIPELINES / name}.py:pipeline" for name in
         ("quickstart", "etl", "routing", "waits", "faults")]
PG_ADMIN = os.environ.get("FLOWSTONE_IT_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("FLOWSTONE_IT_REDIS", "redis://127.0.0.1:6379/0")
RABBIT = os.environ.get("FLOWSTONE_IT_RABBIT", "amqp://guest:guest@127.0.0.1:5672//")
SESSION = uuid.uuid4().hex[:10]
# Short leases and sweeps so recovery happens within a test's patience.
WORKER_ENV = {
    "FLOWSTONE_SWEEP_INTERVAL": "1",
    "FLOWSTONE_RECOVER_AFTER": "10",
    "FLOWSTONE_LEASE_SECONDS": "4",
    "FLOWSTONE_EXECUTOR": "celery",
}


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


class Cluster:
    """Worker subprocesses for one broker and queue, plus cleanup of what they created."""

    def __init__(self, broker: str, queue: str, database_url: str, state_dir: Path) -> None:
        self.broker, self.queue, self.state_dir = broker, queue, state_dir
        self.env = {
            **os.environ, **WORKER_ENV,
            "FLOWSTONE_BROKER_URL": broker, "FLOWSTONE_QUEUE": queue,
            "FLOWSTONE_DATABASE_URL": database_url, "FLOWSTONE_IT_DIR": str(state_dir),
        }
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *, concurrency: int = 2, **env: str) -> subprocess.Popen[bytes]:
        log = self.state_dir / f"{self.queue}-{name}.log"
        cmd = [sys.executable, "-m", "flowstone", "worker"]
        for spec in SPECS:
            cmd += ["--pipeline", spec]
        cmd += ["--concurrency", str(concurrency), "--hostname", f"{name}-{self.queue}@%h",
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

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return next(log for p, log in self.procs if p is proc).read_text()

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # prefork children of a worker that was killed are in its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def purge(self) -> None:
        if self.broker.startswith("redis"):
            import redis

            r = redis.Redis.from_url(self.broker)
            for pattern in (f"{self.queue}*", f"_kombu.binding.{self.queue}*"):
                keys = list(r.scan_iter(match=pattern))
                if keys:
                    r.delete(*keys)
        else:
            from kombu import Connection, Exchange, Queue

            with Connection(self.broker) as conn:
                queue = Queue(self.queue, Exchange(self.queue), self.queue)
                with contextlib.suppress(Exception):
                    queue(conn.channel()).delete()
                with contextlib.suppress(Exception):
                    Exchange(self.queue)(conn.channel()).delete()


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flowstone-it")


@pytest.fixture(scope="session")
def client_env(database_url: str, redis_url: str, state_dir: Path) -> Iterator[str]:
    """This test process as a client: the pipeline files load unchanged, configured only
    by the environment (FLOWSTONE_EXECUTOR=celery + broker + store)."""
    queue = f"fs-it-{SESSION}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWSTONE_EXECUTOR", "celery")
        mp.setenv("FLOWSTONE_BROKER_URL", redis_url)
        mp.setenv("FLOWSTONE_QUEUE", queue)
        mp.setenv("FLOWSTONE_DATABASE_URL", database_url)
        mp.setenv("FLOWSTONE_IT_DIR", str(state_dir))
        yield queue


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


def load(name: str) -> Any:
    from flowstone.loading import load_pipeline

    return load_pipeline(f"{PIPELINES / name}.py:pipeline")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowstone", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
