"""What a new user meets first on the command line: missing plugins, -v/-q on either side
of the command, the assets' own log lines, partition keys as typed, a closed pipe, and the
columns of ``runs``, ``approvals`` and ``lineage``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from flowstone.cli import main

PIPELINE = """\
import flowstone as fs
from datetime import date

STORE = {store!r}

@fs.asset
def numbers(context):
    context.log.info("fetched %d numbers", 3)
    return [1, 2, 3]

@fs.asset
def total(context, numbers):
    context.log.info("summing %d values", len(numbers))
    return sum(numbers)

@fs.asset
def big():
    return list(range(200_000))

@fs.asset(partitions=fs.DailyPartitions("2024-04-01", "2024-04-30"))
def daily(context):
    return context.partition.day

@fs.asset(partitions=fs.StaticPartitions(["us-east", "us-west", "eu-central"]))
def regional(context):
    return context.partition

@fs.asset
def left(numbers):
    return min(numbers)

@fs.asset
def right(numbers):
    return max(numbers)

@fs.asset
def spread(left, right):
    return right - left

@fs.asset
def trade(total):
    return fs.WaitForApproval("book the trade?", value=total)

ASSETS = [numbers, total, big, daily, regional, left, right, spread, trade]
pipeline = fs.Pipeline("newuser", ASSETS, store=STORE)
"""


@pytest.fixture
def spec(tmp_path: Path) -> str:
    path = tmp_path / "flow.py"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    path.write_text(PIPELINE.format(store=store), encoding="utf-8")
    return f"{path}:pipeline"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = cli(capsys, *argv, "--json")
    return code, json.loads(out)


@pytest.fixture
def core_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only flowstone-core installed: no distribution registers any plugin."""

    def entry_points(*, group: str) -> metadata.EntryPoints:
        return metadata.EntryPoints(())

    monkeypatch.setattr(metadata, "entry_points", entry_points)


# --- item 9: commands and plugins that are not installed ------------------------------


@pytest.mark.usefixtures("core_only")
@pytest.mark.parametrize(
    ("argv", "package"),
    [
        (["worker", "--pipeline", "flow.py:pipeline"], "flowstone-celery"),
        (["db", "upgrade"], "flowstone-io-postgres"),
        (["-v", "db", "upgrade", "--create"], "flowstone-io-postgres"),
    ],
)
def test_a_plugin_command_names_the_package_that_provides_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], package: str
) -> None:
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert "invalid choice" not in err
    assert f"pip install {package}" in err
    assert f"`flowstone {argv[argv.index('-v') + 1] if '-v' in argv else argv[0]}`" in err


@pytest.mark.usefixtures("core_only")
def test_a_misspelled_executor_suggests_the_closest_name(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    code, _, err = cli(capsys, "run", spec, "total", "--executor", "celeryy")
    assert code == 2
    assert "did you mean 'celery'? (pip install flowstone-celery)" in err
    code, _, err = cli(capsys, "run", spec, "total", "--executor", "inprocesss")
    assert code == 2
    assert "did you mean 'inprocess'?" in err


def test_a_misspelled_installed_executor_is_suggested(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    code, _, err = cli(capsys, "run", spec, "total", "--executor", "inprocces")
    assert code == 2
    assert "did you mean 'inprocess'?" in err


# --- item 10: -v on either side, the assets' log lines -------------------------------


def test_verbose_is_accepted_before_and_after_the_command(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    for argv in (["-v", "run", spec, "total"], ["run", spec, "total", "-v"]):
        code, out, err = cli(capsys, *argv, "--force")
        assert code == 0, err
        assert "succeeded" in out
        assert "INFO flowstone" in err  # engine INFO lines, not only the assets'
    code, _, err = cli(capsys, "run", spec, "total", "-vv", "--force")
    assert code == 0
    assert "DEBUG" in err or "INFO flowstone" in err


def test_run_shows_the_assets_log_lines_and_quiet_hides_them(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    code, _, err = cli(capsys, "run", spec, "total")
    assert code == 0
    assert "fetched 3 numbers" in err
    assert "summing 3 values" in err
    for argv in (["-q", "run", spec, "total", "--force"], ["run", spec, "total", "-q", "--force"]):
        code, out, err = cli(capsys, *argv)
        assert code == 0
        assert "succeeded" in out
        assert "summing" not in err
    # commands that only read state do not turn the assets' logs on
    code, _, err = cli(capsys, "get", spec, "total")
    assert code == 0 and "summing" not in err


# --- item 12: a closed stdout --------------------------------------------------------


def test_a_reader_that_stops_early_is_not_an_error(tmp_path: Path, spec: str) -> None:
    env = {**os.environ, "FLOWSTONE_HOME": str(tmp_path / "home")}
    env.pop("FLOWSTONE_DATABASE_URL", None)
    env.pop("FLOWSTONE_EXECUTOR", None)
    run = [sys.executable, "-m", "flowstone"]
    subprocess.run([*run, "run", spec, "big"], env=env, check=True, capture_output=True)
    # `flowstone get ... | head -1`: the reader closes the pipe after one line
    with subprocess.Popen(
        [*run, "get", spec, "big"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert first.strip() == b"["
    assert err == ""
    assert code == 141  # as a Unix tool stopped by SIGPIPE


# --- item 11: partition errors in the CLI's own spelling ------------------------------


@pytest.mark.parametrize(
    ("asset", "given", "nearest"),
    [
        ("daily", "2024-05-01", "2024-04-30"),
        ("daily", "2024-03-31", "2024-04-01"),
        ("regional", "us-esat", "us-east"),
    ],
)
def test_a_key_outside_the_set_is_shown_as_typed_with_the_nearest_key(
    capsys: pytest.CaptureFixture[str], spec: str, asset: str, given: str, nearest: str
) -> None:
    code, _, err = cli(capsys, "run", spec, asset, "-p", given)
    assert code == 2
    assert f"'{given}' is not a partition of" in err
    assert f"The nearest partition is '{nearest}'" in err
    assert "datetime.date(" not in err and "DailyPartitions(start=" not in err
    # and the nearest key it names is one the CLI accepts
    code, out, err = cli(capsys, "run", spec, asset, "-p", nearest)
    assert code == 0, err
    assert "succeeded" in out


def test_no_key_far_from_every_member_is_suggested(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    code, _, err = cli(capsys, "run", spec, "regional", "-p", "asia")
    assert code == 2
    assert (
        "'asia' is not a partition of StaticPartitions('us-east', 'us-west', 'eu-central')" in err
    )
    assert "nearest" not in err


def test_a_partition_for_assets_that_are_not_partitioned_is_refused(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    code, _, err = cli(capsys, "run", spec, "total", "-p", "2024-01-01")
    assert code == 2
    assert "'numbers', 'total'" in err and "not partitioned" in err
    assert "drop --partition" in err
    code, _, err = cli(capsys, "get", spec, "total", "-p", "2024-01-01")
    assert code == 2 and "not partitioned" in err
    # nothing ran
    code, out, _ = cli(capsys, "runs", spec)
    assert out.strip() == "no runs"


def test_an_asset_reading_its_partition_still_takes_any_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "tickets.py"
    path.write_text(
        "import flowstone as fs\n"
        "@fs.asset\n"
        "def ticket(context):\n"
        "    return f'handled {context.partition}'\n"
        f"pipeline = fs.Pipeline('tickets', [ticket], store='sqlite:///{tmp_path / 't.db'}')\n",
        encoding="utf-8",
    )
    code, out, err = cli(capsys, "run", f"{path}:pipeline", "ticket", "-p", "T-1002")
    assert code == 0, err
    assert "handled T-1002" in out


# --- item 13: the columns a user looks for -------------------------------------------


def test_runs_show_when_each_run_finished_and_how_long_it_took(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    cli(capsys, "run", spec, "total")
    cli(capsys, "run", spec, "trade")  # waits for an approval: not finished
    code, out, _ = cli(capsys, "runs", spec)
    assert code == 0
    header, waiting, done = out.splitlines()
    assert "FINISHED (UTC)" in header and "DURATION" in header
    assert "succeeded" in done and "waiting" in waiting
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d+\.\d+s +-?$", done.rstrip())
    assert "so far" in waiting
    code, doc = cli_json(capsys, "runs", spec)
    finished = {r["status"]: r for r in doc["runs"]}
    assert finished["succeeded"]["finished_at"] is not None
    assert finished["succeeded"]["duration_seconds"] >= 0
    assert finished["waiting"]["finished_at"] is None


def test_approvals_show_who_decided(capsys: pytest.CaptureFixture[str], spec: str) -> None:
    cli(capsys, "run", spec, "trade")
    code, out, err = cli(capsys, "approve", spec, "1", "--by", "alice")
    assert code == 0, err
    code, out, _ = cli(capsys, "approvals", spec, "--status", "all")
    header, row = out.splitlines()
    assert "DECIDED BY" in header
    assert re.search(r"approved .* alice ", row)
    code, doc = cli_json(capsys, "approvals", spec, "--status", "all")
    assert doc["approvals"][0]["decided_by"] == "alice"


def asset_column(lines: list[str]) -> list[str]:
    """The ASSET column of a ``lineage`` table (title line, header, rows)."""
    width = lines[1].index("PARTITION")
    return [line[:width].rstrip() for line in lines[2:]]


def test_recursive_lineage_is_a_tree_with_depth(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    code, _, err = cli(capsys, "run", spec, "spread")
    assert code == 0, err
    code, out, _ = cli(capsys, "lineage", spec, "spread", "--recursive")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "upstream of 'spread' (tree):"
    names = asset_column(lines)
    assert names == [
        "spread",
        "├─ left",
        "│  └─ numbers",
        "└─ right",
        "   └─ numbers (shown above)",
    ]
    code, doc = cli_json(capsys, "lineage", spec, "spread", "--recursive")
    depths = {m["asset"]: m["depth"] for m in doc["materializations"]}
    assert depths == {"left": 1, "right": 1, "numbers": 2}
    code, out, _ = cli(capsys, "lineage", spec, "numbers", "--downstream", "--recursive")
    names = asset_column(out.splitlines())
    assert names[0] == "numbers" and "└─ spread" in " ".join(names)


# --- item 7: a run in the middle of a deferred scatter is running --------------------

DEFERRING = """\
import flowstone as fs
from datetime import timedelta
from flowstone.scatter import Deferred, ScatterCounts

class WorkersCoordinator:
    \"\"\"Defers every scatter to (absent) workers, as the Celery coordinator does.\"\"\"

    name = "workers"

    def execute(self, request):
        return Deferred("t" * 43)

    def progress(self, pipeline, run_id, asset, partition):
        return ScatterCounts(total=10_000, succeeded=1_200, failed=3, running=50, pending=8_747)

@fs.asset(scatter=fs.Scatter(items=lambda: list(range(10_000))))
def fetch(context):
    return context.scatter_item

@fs.asset
def gated(context):
    return context.signal_gate(timeout=timedelta(hours=1))

pipeline = fs.Pipeline(
    "deferring", [fetch, gated], store={store!r}, scatter_coordinator=WorkersCoordinator()
)
"""


def test_a_run_in_a_deferred_scatter_is_running_with_its_progress(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "deferring.py"
    path.write_text(DEFERRING.format(store=f"sqlite:///{tmp_path / 'd.db'}"), encoding="utf-8")
    spec = f"{path}:pipeline"
    code, doc = cli_json(capsys, "run", spec, "fetch")
    assert code == 0 and doc["status"] == "waiting"  # stored: the step waits on the workers
    cli(capsys, "run", spec, "gated")  # a signal gate: really waits for someone
    code, out, _ = cli(capsys, "runs", spec)
    header, gated, fetch = out.splitlines()
    assert "PROGRESS" in header
    assert re.search(r"\bwaiting\b", gated) and "fetch" not in gated
    assert re.search(r"\brunning\b +fetch", fetch)
    assert "scatter 'fetch': 1,203/10,000 items (3 failed)" in fetch
    code, doc = cli_json(capsys, "runs", spec, "--status", "running")
    [run] = doc["runs"]
    assert run["targets"] == ["fetch"] and run["status"] == "running"
    assert run["stored_status"] == "waiting"
    assert run["scatters"] == [
        {
            "asset": "fetch",
            "partition": None,
            "total": 10_000,
            "succeeded": 1_200,
            "failed": 3,
            "running": 50,
            "pending": 8_747,
        }
    ]
    code, doc = cli_json(capsys, "runs", spec, "--status", "waiting")
    assert [r["targets"] for r in doc["runs"]] == [["gated"]]
