"""``flowstone plugins``, plugin subcommands from ``flowstone.cli`` and ``flowstone daemon``.

Plugins come from a fake site directory in ``tmp_path``: ``importlib.metadata`` is
narrowed to it, so whatever is installed in the test environment cannot leak in.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import pytest

from flowstone.cli import main
from flowstone.loading import load_pipeline

CLI_PLUGIN = """
def register(subparsers):
    p = subparsers.add_parser("hello", help="say hello")
    p.add_argument("name")
    p.set_defaults(func=lambda args: print(f"hello {args.name}") or 3)

def register_then_fail(subparsers):
    subparsers.add_parser("half", help="never usable")
    raise RuntimeError("this plugin is broken")
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    (root / "fscli_plugins.py").write_text(textwrap.dedent(CLI_PLUGIN), encoding="utf-8")
    (root / "fscli_broken.py").write_text("import fscli_dependency_not_installed\n")
    info = root / "acme_tools-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tools\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(
        "[flowstone.cli]\n"
        "hello = fscli_plugins:register\n"
        "half = fscli_plugins:register_then_fail\n"
        "broken = fscli_broken:register\n"
    )

    def entry_points(*, group: str) -> metadata.EntryPoints:
        return metadata.EntryPoints(
            point
            for dist in metadata.distributions(path=[str(root)])
            for point in dist.entry_points
            if point.group == group
        )

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    yield root
    for name in [m for m in sys.modules if m.startswith("fscli_")]:
        del sys.modules[name]


def test_plugins_lists_every_group(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    plugins = json.loads(capsys.readouterr().out)["plugins"]
    assert {"name": "inprocess", "distribution": "flowstone-core (built-in)"}.items() <= (
        plugins["flowstone.executors"][0].items()
    )
    assert {(p["name"], p["distribution"], p["version"]) for p in plugins["flowstone.cli"]} == {
        ("hello", "acme-tools", "1.2"),
        ("half", "acme-tools", "1.2"),
        ("broken", "acme-tools", "1.2"),
    }
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "flowstone.run_stores" in out and "fscli_broken:register" in out


def test_plugin_commands_work_and_broken_plugins_only_warn(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hello", "world"]) == 3  # the plugin handler's exit code
    out, err = capsys.readouterr()
    assert out == "hello world\n"
    assert "warning: CLI plugin 'broken' failed to load" in err
    assert "warning: CLI plugin 'half' failed to load" in err and "this plugin is broken" in err

    assert main(["--help"]) == 0
    out, _ = capsys.readouterr()
    assert "hello" in out and "say hello" in out
    assert "half" not in out  # a plugin that failed half-way leaves no command behind

    assert main(["half"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_core_commands_do_not_load_plugins(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tiny.py").write_text(
        "import flowstone as fs\n"
        "@fs.asset\ndef one():\n    return 1\n"
        f"pipeline = fs.Pipeline('tiny', [one], store='sqlite:///{tmp_path}/runs.db')\n"
    )
    assert main(["run", str(tmp_path / "tiny.py"), "one"]) == 0
    out, err = capsys.readouterr()
    assert "value: 1" in out and "warning" not in err
    assert "fscli_broken" not in sys.modules


# --- daemon ----------------------------------------------------------------------------------

SCHEDULED = """
import flowstone as fs

@fs.asset
def heartbeat(context):
    return context.run_id

@fs.asset
def doomed():
    raise RuntimeError("always fails")

pipeline = fs.Pipeline(
    "cli_daemon",
    [heartbeat, doomed],
    store=STORE,
    schedules=[fs.Schedule("every_minute", "* * * * *", target="heartbeat")],
)

failing = fs.Pipeline(
    "cli_daemon_failing",
    [doomed],
    store=STORE,
    schedules=[fs.Schedule("doom", "* * * * *", target="doomed")],
)
"""


def _scheduled(tmp_path: Path) -> str:
    path = tmp_path / "scheduled.py"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    path.write_text(f"STORE = {store!r}\n" + textwrap.dedent(SCHEDULED), encoding="utf-8")
    return str(path)


def _last_tick_minutes_ago(spec: str, schedule: str, minutes: int) -> None:
    """Pretend a daemon last looked a few minutes ago, so a tick is due now."""
    pipeline = load_pipeline(spec)
    then = datetime.now(UTC) - timedelta(minutes=minutes)
    pipeline.store.set_cursor(
        f"schedule:{pipeline.name}:{schedule}", then.isoformat(), expected=None
    )
    pipeline.store.close()


def test_daemon_once_fires_a_due_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _scheduled(tmp_path)
    _last_tick_minutes_ago(spec, "every_minute", 3)
    assert main(["daemon", spec, "--once"]) == 0
    out = capsys.readouterr().out
    assert "fired 1 (0 failed)" in out
    assert "fired schedule cli_daemon:every_minute" in out and "(succeeded)" in out

    assert main(["daemon", spec, "--once", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fired"] == [] and report["errors"] == []  # the tick fired only once

    assert main(["runs", spec, "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert run["targets"] == ["heartbeat"] and run["tags"]["schedule"] == "every_minute"


def test_daemon_once_exits_1_when_a_fired_run_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _scheduled(tmp_path) + ":failing"
    _last_tick_minutes_ago(spec, "doom", 2)
    assert main(["daemon", spec, "--once", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(f["name"], f["status"]) for f in report["fired"]] == [("doom", "failed")]


def test_daemon_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _scheduled(tmp_path)
    assert main(["daemon", spec, "--interval", "0"]) == 2
    assert "--interval" in capsys.readouterr().err
    assert main(["daemon", spec, "--json"]) == 2
    assert "--once" in capsys.readouterr().err
