"""The README's "Scaling out" section works as written on a server without the database.

The block is run by bash line by line as the README shows it, with three isolating changes
a reader would not need: its database name, Redis database and queue are this test's own
(so the test neither meets nor leaves anything of other users'), and ``pip install`` is
skipped (the packages are installed already). The background worker is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("FLOWSTONE_IT_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def scaling_out_block() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Scaling out", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: the Scaling out section has no bash block"
    return block.group(1).replace("\\\n", " ").splitlines()


def _pg(sql: str) -> object:
    asyncpg = pytest.importorskip("asyncpg")

    async def go() -> object:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_the_scaling_out_section_works_as_written(tmp_path: Path) -> None:
    name = f"flowstone_readme_{uuid.uuid4().hex[:8]}"
    queue = f"fs-it-readme-{uuid.uuid4().hex[:8]}"
    lines = scaling_out_block()
    assert any(line.startswith("flowstone db upgrade --create") for line in lines)
    script = ["set -euo pipefail", "cd " + str(ROOT)]
    for line in lines:
        if line.startswith("pip install"):
            continue
        line = line.replace(":5432/flowstone", f":5432/{name}")
        line = line.replace("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/11")
        if line.rstrip().endswith("&"):
            script += [line, "WORKER=$!", "trap 'kill -TERM $WORKER; wait $WORKER' EXIT"]
        else:
            script.append(line)
        if line.startswith("export FLOWSTONE_BROKER_URL"):
            script.append(f"export FLOWSTONE_QUEUE={queue} FLOWSTONE_HOME={tmp_path}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTONE_")}
    try:
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert f"created database '{name}'" in done.stdout
        assert "is at revision" in done.stdout
        assert re.search(r"run \w+ succeeded", done.stdout), output
        assert "value: 30" in done.stdout, output
    finally:
        _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import redis

        r = redis.Redis.from_url("redis://127.0.0.1:6379/11")
        for key in r.scan_iter(match=f"*{queue}*"):
            r.delete(key)


def test_upgrade_without_create_names_the_flag(tmp_path: Path) -> None:
    name = f"flowstone_missing_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTONE_")}
    env["FLOWSTONE_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    done = subprocess.run(
        ["flowstone", "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f'database "{name}" does not exist' in done.stderr
    assert "flowstone db upgrade --create" in done.stderr
    assert _pg(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == 0
