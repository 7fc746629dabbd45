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


def _proc_stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command name, CPU seconds so far) of process ``pid``, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """The CPU each kind of process spends between :meth:`start` and :meth:`stop`
    (``--cpu``; Linux only, from ``/proc``): this process (the client), the worker's
    main process and its pool children, the PostgreSQL and Redis servers, and the
    machine's busy and idle time (``/proc/stat``). A process that ends inside the window
    is not counted; the benchmarks stop their workers after it."""

    def __init__(self, worker_pid: int) -> None:
        self.worker_pid = worker_pid
        self._before: dict[int, tuple[str, float]] = {}
        self._machine: list[int] = []

    def _groups(self) -> dict[int, tuple[str, float]]:
        found: dict[int, tuple[str, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            got = _proc_stat(int(entry))
            if got is None:
                continue
            ppid, name, cpu = got
            pid = int(entry)
            if pid == os.getpid():
                found[pid] = ("client", cpu)
            elif pid == self.worker_pid:
                found[pid] = ("worker main", cpu)
            elif ppid == self.worker_pid:
                found[pid] = ("worker children", cpu)
            elif name == "postgres":
                found[pid] = ("postgres", cpu)
            elif name == "redis-server":
                found[pid] = ("redis", cpu)
        return found

    @staticmethod
    def _machine_ticks() -> list[int]:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]

    def start(self) -> None:
        self._before, self._machine = self._groups(), self._machine_ticks()

    def stop(self, units: int) -> dict[str, float]:
        """ms of CPU per unit (a parent, a step) by kind of process, and the machine's
        idle share of the window (``idle %``)."""
        after, machine = self._groups(), self._machine_ticks()
        spent: dict[str, float] = {}
        for pid, (group, cpu) in after.items():
            if pid in self._before:  # (a process started inside the window: not counted)
                spent[group] = spent.get(group, 0.0) + cpu - self._before[pid][1]
        out = {group: round(1000 * cpu / units, 3) for group, cpu in sorted(spent.items())}
        out["total"] = round(sum(out.values()), 3)
        delta = [b - a for a, b in zip(self._machine, machine, strict=True)]
        idle = delta[3] + delta[4]  # idle + iowait
        out["idle %"] = round(100 * idle / max(1, sum(delta)), 1)
        return out
