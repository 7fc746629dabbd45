"""Smoke test of one distribution installed from its wheel into a fresh venv.

Run by ``nox -s build`` with the venv's own interpreter, from a directory outside the
repository, after ``flowstone-core`` and the distribution were installed from the built
wheels alone::

    <venv>/bin/python .ci/smoke.py DISTRIBUTION EXAMPLES_DIR

It proves the installed code is the wheel's (not the repository's), loads every plugin the
distribution registers (which also checks its declared flowstone-core range), then runs
the distribution's own smoke path:

* flowstone-core: the quickstart, in-process, from the ``flowstone`` command;
* flowstone-io-postgres: ``flowstone db upgrade --create`` on a database of its own
  (dropped afterwards), then ``flowstone db current`` reports the head revision;
* flowstone-celery: a worker round trip: ``flowstone worker`` serving the quickstart,
  ``flowstone run`` on it, the value back, the worker stopped and its queue removed.

Services: ``FLOWSTONE_SMOKE_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
and ``FLOWSTONE_SMOKE_REDIS`` (default ``redis://127.0.0.1:6379/11``). Exits non-zero,
saying what failed, on any failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path

PG_ADMIN = os.environ.get("FLOWSTONE_SMOKE_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("FLOWSTONE_SMOKE_REDIS", "redis://127.0.0.1:6379/11")
BIN = Path(sys.executable).parent


def fail(message: str) -> None:
    print(f"smoke: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def flowstone(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(  # noqa: S603 - this venv's own flowstone command
        [str(BIN / "flowstone"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        fail(f"flowstone {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWSTONE_", "PYTHON"))}
    return {**env, **extra}


def check_installed_from_wheel(dist: str, repo: Path) -> None:
    import flowstone

    for name in ("flowstone-core", dist):
        files = metadata.distribution(name).files or []
        if any(str(f).endswith(".pth") for f in files) or "__editable__" in str(files):
            fail(f"{name} is an editable install, not the wheel")
    where = Path(flowstone.__file__).resolve()
    if any(repo / tree in where.parents for tree in ("packages", "plugins")):
        fail(f"flowstone is imported from the repository ({where}), not from the venv")
    if Path(sys.prefix).resolve() not in where.parents:
        fail(f"flowstone is imported from {where}, outside this venv ({sys.prefix})")


def load_every_plugin(dist: str) -> int:
    """Import every ``flowstone.*`` entry point of ``dist``: the registry's groups through the
    registry (which refuses a plugin built for another core), others directly."""
    from flowstone.errors import FlowStoneError
    from flowstone.registry import GROUPS, PluginRegistry

    registry = PluginRegistry()
    points = [
        p for p in metadata.distribution(dist).entry_points if p.group.startswith("flowstone.")
    ]
    for point in points:
        try:
            if point.group in GROUPS:
                registry.load(point.group, point.name)
            else:
                point.load()
        except (FlowStoneError, ImportError) as exc:
            fail(f"{point.group} entry point {point.name!r} of {dist}: {exc}")
    return len(points)


def quickstart(examples: Path, env: dict[str, str]) -> None:
    out = flowstone("run", f"{examples / 'quickstart.py'}:pipeline", "total", "--json", env=env)
    result = json.loads(out)
    if (result["status"], result["value"]) != ("succeeded", 30):
        fail(f"quickstart gave {result['status']} {result['value']!r}, not succeeded 30")


def _pg(sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def postgres(work: Path) -> None:
    name = f"flowstone_smoke_{uuid.uuid4().hex[:8]}"
    server = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    env = clean_env(FLOWSTONE_DATABASE_URL=f"postgresql+asyncpg://{server}/{name}")
    try:
        out = flowstone("db", "upgrade", "--create", env=env)
        if f"created database '{name}'" not in out or "(head)" not in out:
            fail(f"flowstone db upgrade --create said: {out!r}")
        current = flowstone("db", "current", env=env)
        if "(head)" not in current:
            fail(f"flowstone db current said: {current!r}")
    finally:
        _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def celery(examples: Path, work: Path) -> None:
    queue = f"fs-smoke-{uuid.uuid4().hex[:8]}"
    env = clean_env(
        FLOWSTONE_EXECUTOR="celery",
        FLOWSTONE_BROKER_URL=REDIS,
        FLOWSTONE_QUEUE=queue,
        FLOWSTONE_DATABASE_URL=f"sqlite:///{work / 'runs.db'}",
        FLOWSTONE_HOME=str(work / "home"),
    )
    log = work / "worker.log"
    spec = f"{examples / 'quickstart.py'}:pipeline"
    with log.open("wb") as out:
        worker = subprocess.Popen(  # noqa: S603 - this venv's own flowstone command
            [
                str(BIN / "flowstone"),
                "worker",
                "--pipeline",
                spec,
                "--concurrency",
                "1",
                "--hostname",
                f"{queue}@%h",
                "--",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                fail(f"the worker did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        quickstart(examples, env)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        import redis

        r = redis.Redis.from_url(REDIS)
        for key in r.scan_iter(match=f"*{queue}*"):
            r.delete(key)


def main() -> None:
    dist, examples = sys.argv[1], Path(sys.argv[2]).resolve()
    check_installed_from_wheel(dist, examples.parent)
    loaded = load_every_plugin(dist) if dist != "flowstone-core" else 0
    with tempfile.TemporaryDirectory(prefix="flowstone-smoke-") as tmp:
        work = Path(tmp)
        if dist == "flowstone-core":
            quickstart(examples, clean_env(FLOWSTONE_HOME=str(work / "home")))
        elif dist == "flowstone-io-postgres":
            postgres(work)
        elif dist == "flowstone-celery":
            celery(examples, work)
    print(f"smoke: {dist} OK ({loaded} plugin entry points loaded)")


if __name__ == "__main__":
    main()
