"""What every Celery benchmark needs: services, worker processes, clean-up.

Shared by ``celery_runtime.py``, ``scatter.py`` and ``parallel.py`` (run as scripts, so
this directory is on ``sys.path``). Servers are the local ones; nothing here listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PG_ADMIN = os.environ.get("FLOWSTONE_IT_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("FLOWSTONE_IT_REDIS", "redis://127.0.0.1:6379/0")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pg_admin(sql: str) -> None:
    """Run one statement on the server's admin database (CREATE/DROP DATABASE)."""
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def start_worker(cmd: list[str], env: dict[str, str], logfile: Path, node: str) -> Any:
    """Start a worker and wait until node ``node`` answers a control ping."""
    from flowstone_celery import load_settings, make_app

    with logfile.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    app = make_app(load_settings(broker_url=env["FLOWSTONE_BROKER_URL"]))
    deadline = time.monotonic() + 120
    try:
        while not any(node in reply for reply in app.control.ping(timeout=0.5) or []):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_worker(proc)
                raise RuntimeError(f"worker did not start:\n{logfile.read_text()[-3000:]}")
    finally:
        app.close()
    return proc


def stop_worker(proc: Any) -> None:
    """SIGTERM (drain), then SIGKILL the whole process group after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def drop_queue_and_database(queue: str, db: str) -> None:
    """Remove the benchmark's Redis keys and its throwaway database."""
    import redis

    r = redis.Redis.from_url(REDIS)
    for pattern in (f"{queue}*", f"_kombu.binding.{queue}*"):
        keys = list(r.scan_iter(match=pattern))
        if keys:
            r.delete(*keys)
    with contextlib.suppress(Exception):
        pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
