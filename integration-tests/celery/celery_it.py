"""Helpers for the Celery integration tests: worker processes, CLI calls, waiting."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PIPELINES = HERE / "pipelines"
SPECS = [f"{PIPELINES / name}.py:pipeline" for name in
         ("quickstart", "etl", "routing", "waits", "faults")]
# Short leases and sweeps so recovery happens within a test's patience.
WORKER_ENV = {
    "FLOWSTONE_SWEEP_INTERVAL": "1",
    "FLOWSTONE_RECOVER_AFTER": "10",
    "FLOWSTONE_LEASE_SECONDS": "4",
    "FLOWSTONE_EXECUTOR": "celery",
}


class Cluster:
    """Worker subprocesses for one broker and queue, plus cleanup of what they created."""

    def __init__(self, broker: str, queue: str, database_url: str, state_dir: Path,
                 specs: list[str] | None = None) -> None:
        self.broker, self.queue, self.state_dir = broker, queue, state_dir
        self.specs = list(SPECS if specs is None else specs)  # pipelines the workers serve
        self.env = {
            **os.environ, **WORKER_ENV,
            "FLOWSTONE_BROKER_URL": broker, "FLOWSTONE_QUEUE": queue,
            "FLOWSTONE_DATABASE_URL": database_url, "FLOWSTONE_IT_DIR": str(state_dir),
        }
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *, concurrency: int = 2, worker_args: tuple[str, ...] = (),
              **env: str) -> subprocess.Popen[bytes]:
        log = self.state_dir / f"{self.queue}-{name}.log"
        cmd = [sys.executable, "-m", "flowstone", "worker"]
        for spec in self.specs:
            cmd += ["--pipeline", spec]
        cmd += ["--concurrency", str(concurrency), "--hostname", f"{name}-{self.queue}@%h",
                *worker_args, "--", "--without-mingle", "--without-gossip"]
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
        """Remove what this cluster left on the broker (after :meth:`stop_all`).

        On Redis: the queue's keys, its kombu bindings (``_kombu.binding*``), the members
        its workers added to shared binding sets (pidbox), and the entries of messages
        still unacknowledged for this queue (``unacked``/``unacked_index``, which would
        otherwise be restored later). Raises if anything of the queue is left.
        """
        if self.broker.startswith("redis"):
            import redis

            r = redis.Redis.from_url(self.broker)
            purge_redis(r, self.queue)
            left = redis_leftovers(r, self.queue)
            if left:
                raise AssertionError(f"Redis keys of queue {self.queue} left behind: {left[:10]}")
        else:
            from kombu import Connection, Exchange, Queue

            with Connection(self.broker) as conn:
                queue = Queue(self.queue, Exchange(self.queue), self.queue)
                with contextlib.suppress(Exception):
                    queue(conn.channel()).delete()
                with contextlib.suppress(Exception):
                    Exchange(self.queue)(conn.channel()).delete()


def purge_redis(r: Any, marker: str) -> None:
    """Delete every key naming ``marker`` and every shared entry that refers to it."""
    for key in r.scan_iter(match=f"*{marker}*", count=1000):
        r.delete(key)
    for key in r.scan_iter(match="_kombu.binding*", count=1000):
        if r.type(key) == b"set":
            stale = [m for m in r.smembers(key) if marker.encode() in m]
            if stale:
                r.srem(key, *stale)
    stale_tags = [
        tag for tag, body in r.hscan_iter("unacked", count=1000) if marker.encode() in body
    ]
    if stale_tags:
        r.hdel("unacked", *stale_tags)
        r.zrem("unacked_index", *stale_tags)


def redis_leftovers(r: Any, marker: str) -> list[str]:
    """Keys, shared set members and unacked messages that still name ``marker``."""
    left = [k.decode() for k in r.scan_iter(match=f"*{marker}*", count=1000)]
    for key in r.scan_iter(match="_kombu.binding*", count=1000):
        if r.type(key) == b"set" and any(marker.encode() in m for m in r.smembers(key)):
            left.append(f"{key.decode()} (member)")
    if any(marker.encode() in body for _, body in r.hscan_iter("unacked", count=1000)):
        left.append("unacked (message)")
    return left


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
