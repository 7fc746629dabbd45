"""Every example in ``examples/`` runs on real Celery workers (Postgres + Redis) and gives
the values it gives in-process.

Each scenario is what a user does with the example from the shell, through the
``flowstone`` command: once with nothing configured (in-process, SQLite under a fresh
``FLOWSTONE_HOME``), once with ``FLOWSTONE_EXECUTOR=celery`` against the workers. The
in-process values are checked against the examples' data by the core's
``test_examples.py``; here the two runs must agree, and a few values are pinned too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery_it import Cluster
from conftest import EXAMPLES

pytestmark = pytest.mark.integration

Flowstone = Callable[..., Any]


def spec(name: str) -> str:
    return f"{EXAMPLES / name}.py:pipeline"


def make_cli(env: dict[str, str]) -> Flowstone:
    """``fs("run", ...)`` -> the parsed ``--json`` document (exit status checked)."""

    def fs(*args: str, ok: tuple[int, ...] = (0,)) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "flowstone", *args, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
            check=False,
        )
        assert done.returncode in ok, f"flowstone {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout)

    return fs


def quickstart(fs: Flowstone, outbox: Path) -> dict[str, Any]:
    return {"total": fs("run", spec("quickstart"), "total", "--force")["value"]}


def daily_etl(fs: Flowstone, outbox: Path) -> dict[str, Any]:
    done = fs(
        "backfill",
        spec("daily_etl"),
        "trailing_revenue",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-07",
        "--force",
    )
    days = ("2024-03-01", "2024-03-04", "2024-03-07")
    return {
        "succeeded": len(done["succeeded"]),
        "failed": done["failed"],
        **{d: fs("get", spec("daily_etl"), "trailing_revenue", "-p", d)["value"] for d in days},
        "first_previous": fs("status", spec("daily_etl"), "previous_revenue", "-p", "2024-03-01")[
            "status"
        ],
    }


def routing(fs: Flowstone, outbox: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for order in ("A-1001", "A-1002", "A-1003"):
        out[order] = fs("run", spec("routing"), "fulfilment", "-p", order, "--force")["value"]
        out[f"{order} small"] = fs("status", spec("routing"), "small", "-p", order)["status"]
    return out


def parallel_join(fs: Flowstone, outbox: Path) -> dict[str, Any]:
    lisbon = fs("run", spec("parallel_join"), "briefing", "-p", "Lisbon", "--force")
    fs("run", spec("parallel_join"), "briefing", "-p", "Reykjavik", "--force", ok=(0,))
    return {
        "Lisbon": lisbon["value"],
        "Reykjavik": fs("get", spec("parallel_join"), "briefing", "-p", "Reykjavik")["value"],
        "front_pages Reykjavik": fs(
            "status", spec("parallel_join"), "front_pages", "-p", "Reykjavik"
        )["status"],
    }


def scatter_jsonl(fs: Flowstone, outbox: Path) -> dict[str, Any]:
    report = fs("run", spec("scatter_jsonl"), "site_report", "--force")["value"]
    return {"report": report, "stats": fs("get", spec("scatter_jsonl"), "page_stats")["value"]}


def approval(fs: Flowstone, outbox: Path) -> dict[str, Any]:
    small = fs("run", spec("approval"), "booking", "-p", "T-1001", "--force")
    large = fs("run", spec("approval"), "booking", "-p", "T-1002", "--force")
    approved = fs(
        "approve",
        spec("approval"),
        "--run-id",
        large["run_id"],
        "--asset",
        "trade",
        "-p",
        "T-1002",
        "--by",
        "it",
    )
    return {
        "small": small["value"],
        "large status": large["status"],
        "approved": (approved["status"], approved["value"]),
    }


def signal_gate(fs: Flowstone, outbox: Path) -> dict[str, Any]:
    waiting = fs("run", spec("signal_gate"), "index_entry", "-p", "doc-2", "--force")
    job = json.loads((outbox / "doc-2.json").read_text(encoding="utf-8"))
    (outbox / "doc-2.json").unlink()
    resumed = fs(
        "signal",
        spec("signal_gate"),
        job["callback_token"],
        "--payload",
        '{"vector": [0.5, 0.25, 0.125, 1]}',
    )
    return {
        "waiting": waiting["status"],
        "job": job["document"]["id"],
        "resumed": (resumed["status"], resumed["value"]),
    }


SCENARIOS = [quickstart, daily_etl, routing, parallel_join, scatter_jsonl, approval, signal_gate]
PINNED = {
    "quickstart": {"total": 30},
    "daily_etl": {"succeeded": 7, "failed": [], "first_previous": "skipped"},
    "routing": {"A-1002 small": "skipped"},
    "parallel_join": {"front_pages Reykjavik": "failed"},
    "approval": {"large status": "waiting"},
    "signal_gate": {
        "waiting": "waiting",
        "resumed": [
            "succeeded",
            {"id": "doc-2", "dimensions": 4, "preview": "Signal gates pause a run until"},
        ],
    },
}


def test_every_example_has_a_scenario() -> None:
    assert sorted(f.__name__ for f in SCENARIOS) == sorted(p.stem for p in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_example_gives_the_same_values_on_workers_as_in_process(
    scenario: Callable[[Flowstone, Path], dict[str, Any]],
    cluster: Cluster,
    outbox: Path,
    tmp_path: Path,
) -> None:
    local_home = tmp_path / "home"
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTONE_")}
    local_env |= {
        "FLOWSTONE_HOME": str(local_home),
        "EMBEDDING_OUTBOX": str(local_home / "embedding-outbox"),
    }
    in_process = json.loads(
        json.dumps(scenario(make_cli(local_env), local_home / "embedding-outbox"))
    )
    workers_env = {**os.environ, "EMBEDDING_OUTBOX": str(outbox)}
    assert workers_env["FLOWSTONE_EXECUTOR"] == "celery"
    on_workers = json.loads(json.dumps(scenario(make_cli(workers_env), outbox)))
    assert on_workers == in_process
    for key, value in PINNED.get(scenario.__name__, {}).items():
        assert on_workers[key] == value, key
