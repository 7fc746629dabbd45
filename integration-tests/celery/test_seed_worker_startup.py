"""Seed: hierarchical worker start-up (seed 000 section 1, seed 001 section 7; DESIGN.md section 8).

A worker checks what it depends on before it takes any work: with the database unreachable,
the FlowStone schema missing or behind, or a bad pipeline spec, both ``flowstone worker``
and the documented ``celery -A flowstone_celery.worker_app worker`` must consume nothing and
exit non-zero with a message saying what is wrong. Pipelines load once, in the main process,
before the pool forks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_it import PIPELINES, purge_redis, redis_leftovers, wait_for

pytestmark = pytest.mark.integration

GOOD_SPEC = f"{PIPELINES / 'seed_startup.py'}:pipeline"
ADMIN = os.environ.get("FLOWSTONE_IT_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin(sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(ADMIN.replace("+asyncpg", ""), timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def _url_of(database: str) -> str:
    return "postgresql+asyncpg://" + ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="module")
def bad_databases(database_url: str) -> Iterator[dict[str, str]]:
    """URLs of an unreachable server, a database without the schema, and one behind."""
    tag = uuid.uuid4().hex[:8]
    empty, behind = f"flowstone_it_seed_empty_{tag}", f"flowstone_it_seed_behind_{tag}"
    _admin(f'CREATE DATABASE "{empty}"')
    _admin(f'CREATE DATABASE "{behind}"')
    try:
        from flowstone_io_postgres import migrate
        from flowstone_io_postgres.urls import resolve_url

        asyncio.run(migrate.upgrade(resolve_url(_url_of(behind)), "flowstone", "0003",
                                    plugins=False))
        yield {
            "database unreachable": "postgresql+asyncpg://postgres@127.0.0.1:1/flowstone",
            "schema missing": _url_of(empty),
            "schema behind": _url_of(behind),
        }
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{empty}" WITH (FORCE)')
        _admin(f'DROP DATABASE IF EXISTS "{behind}" WITH (FORCE)')


def _command(kind: str, queue: str, spec: str) -> list[str]:
    common = ["--concurrency", "2", "--hostname", f"seed-{queue}@%h"]
    if kind == "flowstone worker":
        return [sys.executable, "-m", "flowstone", "worker", "--pipeline", spec, *common,
                "--", "--without-mingle", "--without-gossip"]
    return [sys.executable, "-m", "celery", "-A", "flowstone_celery.worker_app", "worker",
            "-Q", queue, "--loglevel=INFO", *common, "--without-mingle", "--without-gossip"]


def _env(queue: str, redis_url: str, database_url: str, state_dir: Path,
         spec: str) -> dict[str, str]:
    return {**os.environ, "FLOWSTONE_EXECUTOR": "celery", "FLOWSTONE_BROKER_URL": redis_url,
            "FLOWSTONE_QUEUE": queue, "FLOWSTONE_DATABASE_URL": database_url,
            "FLOWSTONE_PIPELINES": spec, "FLOWSTONE_IT_DIR": str(state_dir),
            "FLOWSTONE_SWEEPER": "0"}


def _publish_one(redis_url: str, queue: str) -> None:
    """A step message waiting on the queue before the worker starts."""
    from flowstone_celery import load_settings
    from flowstone_celery.app import RUN_STEP_TASK, make_app

    app = make_app(load_settings(broker_url=redis_url, queue=queue))
    try:
        body = {"v": 1, "run_id": "seed-startup", "pipeline": "it_seed_startup",
                "asset": "answer", "partition": "", "attempt": 1}
        app.send_task(RUN_STEP_TASK, args=(body,), queue=queue, ignore_result=True)
    finally:
        app.close()


def _run_to_exit(cmd: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        return proc.wait(timeout=25)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise AssertionError(f"the worker kept running:\n{log.read_text()[-3000:]}") from None


EXPECTED = {
    "database unreachable": ("127.0.0.1:1",),
    "schema missing": ("does not exist", "flowstone db upgrade"),
    "schema behind": ("is at revision 0003", "flowstone db upgrade"),
    "bad pipeline spec": ("no_such_pipeline",),
}


@pytest.mark.parametrize("kind", ["flowstone worker", "celery -A worker_app"])
@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_seed_worker_refuses_to_start_without_what_it_needs(
    kind: str, state: str, bad_databases: dict[str, str], database_url: str, redis_url: str,
    state_dir: Path,
) -> None:
    """Seed 000 section 1 / 001 section 7: start-up order is enforced, not hoped for."""
    import redis

    queue = f"fs-it-seed-start-{uuid.uuid4().hex[:8]}"
    spec = GOOD_SPEC if state != "bad pipeline spec" else f"{GOOD_SPEC[:-9]}:no_such_pipeline"
    url = bad_databases.get(state, database_url)
    r = redis.Redis.from_url(redis_url)
    try:
        _publish_one(redis_url, queue)
        assert r.llen(queue) == 1
        log = state_dir / f"{queue}.log"
        code = _run_to_exit(_command(kind, queue, spec),
                            _env(queue, redis_url, url, state_dir, spec), log)
        text = log.read_text()
        assert code != 0, text[-3000:]
        assert " ready." not in text  # it never became a consumer
        assert r.llen(queue) == 1, text[-3000:]  # the waiting message was not taken
        assert not any(queue.encode() in body for _, body in r.hscan_iter("unacked"))
        for phrase in EXPECTED[state]:
            assert phrase in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]  # a message, not a crash dump
    finally:
        purge_redis(r, queue)
        assert not redis_leftovers(r, queue)


@pytest.mark.parametrize("kind", ["flowstone worker", "celery -A worker_app"])
def test_seed_worker_loads_pipelines_in_the_parent_before_forking(
    kind: str, database_url: str, redis_url: str, state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 000 section 1 / 001 section 7: pipelines load once, in the main process."""
    import redis

    monkeypatch.setenv("FLOWSTONE_IT_DIR", str(state_dir))
    monkeypatch.setenv("FLOWSTONE_DATABASE_URL", database_url)

    queue = f"fs-it-seed-fork-{uuid.uuid4().hex[:8]}"
    loads = state_dir / "seed-startup-loads"
    loads.unlink(missing_ok=True)
    log = state_dir / f"{queue}.log"
    env = _env(queue, redis_url, database_url, state_dir, GOOD_SPEC)
    with log.open("wb") as out:
        proc = subprocess.Popen(_command(kind, queue, GOOD_SPEC), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    pipeline = None
    try:
        wait_for(lambda: b" ready." in log.read_bytes() or proc.poll() is not None,
                 what="the worker to start")
        assert proc.poll() is None, log.read_text()[-3000:]
        # loaded once, by the main process (the pool's processes are its children)
        assert loads.read_text().split() == [str(proc.pid)]
        from flowstone.loading import load_pipeline
        from flowstone_celery import CeleryExecutor, load_settings

        loads.unlink()
        pipeline = load_pipeline(GOOD_SPEC)  # the test's own import, not the worker's
        pipeline.use_executor(CeleryExecutor(load_settings(broker_url=redis_url, queue=queue)))
        loads.write_text("")
        result = pipeline.run("answer", timeout=60)
        assert result.status == "succeeded" and result.value == 42, result.error
        # a pool process ran the step without importing the pipeline file again
        assert loads.read_text() == ""
    finally:
        if pipeline is not None:
            pipeline.close()
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        r = redis.Redis.from_url(redis_url)
        purge_redis(r, queue)
