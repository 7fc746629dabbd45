"""The CLI across processes: a run waits in one process and is resumed from another.

These start real ``python -m flowstone`` processes against a SQLite store in ``tmp_path``,
so they are slower than the rest; keep them few.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowstone.cli import main

PIPELINE = """\
import flowstone as fs
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).parent

@fs.asset
def quote():
    return {"symbol": "ACME", "qty": 500}

@fs.asset
def trade(quote):
    return fs.WaitForApproval("trade of 500 ACME", value={**quote, "approved": True})

@fs.asset
def booked(trade):
    return f"booked {trade['qty']} {trade['symbol']}"

def on_signal(context, payload):
    return {"embedded": payload["result"]}

@fs.asset(on_signal=on_signal)
def embedded(context, quote):
    gate = context.signal_gate(timeout=timedelta(hours=1))
    (HERE / "token.txt").write_text(gate.token)  # the "external system" gets the token
    return gate

pipeline = fs.Pipeline(
    "cli_procs", [quote, trade, booked, embedded], store=f"sqlite:///{HERE / 'runs.db'}"
)
"""


@pytest.fixture
def spec(tmp_path: Path) -> str:
    (tmp_path / "trading.py").write_text(textwrap.dedent(PIPELINE), encoding="utf-8")
    return f"{tmp_path / 'trading.py'}:pipeline"


def flowstone(
    tmp_path: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWSTONE_HOME": str(tmp_path / "home")}
    env.pop("FLOWSTONE_DATABASE_URL", None)
    env.pop("FLOWSTONE_EXECUTOR", None)
    return subprocess.run(
        [sys.executable, "-m", "flowstone", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        input=stdin,
        timeout=120,
        check=False,
    )


def test_approval_across_processes(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = flowstone(tmp_path, "run", spec, "booked", "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    assert run["status"] == "waiting"
    (approval,) = run["approvals"]
    assert approval["asset"] == "trade" and approval["message"] == "trade of 500 ACME"

    approved = flowstone(tmp_path, "approve", spec, str(approval["id"]), "--by", "alice")
    assert approved.returncode == 0, approved.stderr
    assert f"run {run['run_id']} succeeded" in approved.stdout
    assert "booked 500 ACME" in approved.stdout

    assert main(["get", spec, "trade", "--json"]) == 0
    value = json.loads(capsys.readouterr().out)["value"]
    assert value == {"symbol": "ACME", "qty": 500, "approved": True}


def test_signal_across_processes(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = flowstone(tmp_path, "run", spec, "embedded")
    assert started.returncode == 0, started.stderr
    assert "waiting for a signal on asset 'embedded'" in started.stdout
    token = (tmp_path / "token.txt").read_text()

    # the token comes on stdin ('-'), so it never shows in the process list
    signaled = flowstone(
        tmp_path, "signal", spec, "-", "--payload", '{"result": 42}', stdin=token + "\n"
    )
    assert signaled.returncode == 0, signaled.stderr
    assert "succeeded" in signaled.stdout

    assert main(["get", spec, "embedded"]) == 0
    assert json.loads(capsys.readouterr().out) == {"embedded": 42}

    again = flowstone(tmp_path, "signal", spec, token, "--payload", "{}")
    assert again.returncode == 2 and again.stderr.startswith("error: ")
    assert "Traceback" not in again.stderr


def test_daemon_stops_cleanly_on_sigterm(spec: str, tmp_path: Path) -> None:
    env = {**os.environ, "FLOWSTONE_HOME": str(tmp_path / "home")}
    env.pop("FLOWSTONE_DATABASE_URL", None)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "flowstone", "daemon", spec, "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline().startswith("daemon serving cli_procs")
        assert "fired 0" in daemon.stdout.readline()  # a first tick happened
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, err
    assert out.rstrip().endswith("daemon stopped")
    assert "Traceback" not in err
