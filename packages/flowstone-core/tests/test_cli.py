"""The ``flowstone`` command line, driven through ``main([...])`` against pipeline files.

Each test writes a small pipeline module into its ``tmp_path`` with a SQLite store there
(``FLOWSTONE_HOME`` also points into ``tmp_path``, see conftest), so nothing lands in the
repository. Subprocess tests live in ``test_cli_processes.py``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from flowstone.cli import main

HEADER = """\
import flowstone as fs
from datetime import date, timedelta
from decimal import Decimal
"""

BASIC = """
CALLS = []

@fs.asset
def numbers():
    CALLS.append("numbers")
    return [1, 2, 3]

@fs.asset
def total(numbers):
    return sum(numbers)

@fs.asset
def trade(total):
    return fs.WaitForApproval("large trade", value={"total": total})

@fs.asset
def booked(trade):
    return trade["total"] * 10

@fs.asset
def broken(numbers):
    raise ValueError("the feed is down")

pipeline = fs.Pipeline("cli_basic", [numbers, total, trade, booked, broken], store=STORE)
"""

DAILY = """
@fs.asset(partitions=fs.DailyPartitions(start=date(2024, 1, 1), end=date(2024, 1, 10)))
def daily(context):
    if context.partition == date(2024, 1, 4):
        raise RuntimeError("no data on the 4th")
    return {"day": context.partition, "n": context.partition.day}

pipeline = fs.Pipeline("cli_daily", [daily], store=STORE)
"""


def write(tmp_path: Path, body: str, name: str = "flow.py") -> str:
    path = tmp_path / name
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    path.write_text(HEADER + f"STORE = {store!r}\n" + textwrap.dedent(body), encoding="utf-8")
    return str(path)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = cli(capsys, *argv, "--json")
    return code, json.loads(out)


@pytest.fixture
def basic(tmp_path: Path) -> str:
    return write(tmp_path, BASIC) + ":pipeline"


@pytest.fixture
def daily(tmp_path: Path) -> str:
    return write(tmp_path, DAILY, name="daily.py")


# --- run ----------------------------------------------------------------------------------


def test_run_prints_a_readable_summary(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    code, out, err = cli(capsys, "run", basic, "total")
    assert code == 0, err
    assert "succeeded" in out.splitlines()[0]
    assert "numbers" in out and "total" in out
    assert "value: 6" in out


def test_run_json_has_the_documented_shape(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    code, doc = cli_json(capsys, "run", basic, "total")
    assert code == 0
    assert {"run_id", "status", "value", "materializations"} <= set(doc)
    assert doc["status"] == "succeeded" and doc["value"] == 6
    assert [m["asset"] for m in doc["materializations"]] == ["numbers", "total"]
    assert all(m["reused"] is False for m in doc["materializations"])


def test_second_run_reuses_materialized_values(
    capsys: pytest.CaptureFixture[str], basic: str
) -> None:
    _, first = cli_json(capsys, "run", basic, "total")
    code, second = cli_json(capsys, "run", basic, "total")
    assert code == 0 and second["run_id"] != first["run_id"]
    # total is reused as it is, so its inputs are not even looked at
    assert {m["asset"]: m["reused"] for m in second["materializations"]} == {"total": True}
    assert second["value"] == 6
    _, forced = cli_json(capsys, "run", basic, "total", "--force")
    assert all(not m["reused"] for m in forced["materializations"])


def test_run_with_a_partition(capsys: pytest.CaptureFixture[str], daily: str) -> None:
    code, doc = cli_json(capsys, "run", daily, "daily", "--partition", "2024-01-02")
    assert code == 0
    assert doc["partition"] == "2024-01-02"
    assert doc["value"] == {"day": "2024-01-02", "n": 2}  # a date value renders as ISO text
    code, out, _ = cli(capsys, "get", daily, "daily", "-p", "2024-01-02")
    assert code == 0 and json.loads(out) == {"day": "2024-01-02", "n": 2}
    code, _, err = cli(capsys, "get", daily, "daily")
    assert code == 2 and "is partitioned" in err and "--partition" in err
    code, doc = cli_json(capsys, "status", daily, "daily", "-p", "2024-01-03")
    assert code == 0 and doc["status"] is None and doc["partition"] == "2024-01-03"


def test_a_partition_outside_the_set_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], daily: str
) -> None:
    code, out, err = cli(capsys, "run", daily, "daily", "--partition", "2030-01-01")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "2024-01-01" in err
    assert "Traceback" not in err


def test_a_failing_asset_exits_1_and_says_why(
    capsys: pytest.CaptureFixture[str], basic: str
) -> None:
    code, out, _ = cli(capsys, "run", basic, "broken")
    assert code == 1
    assert "failed" in out.splitlines()[0]
    assert "the feed is down" in out
    code, doc = cli_json(capsys, "run", basic, "broken")
    assert code == 1 and doc["status"] == "failed" and doc["value"] is None
    assert "the feed is down" in doc["error"]


def test_tags_and_no_deps(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    code, out, err = cli(capsys, "run", basic, "total", "--no-deps")
    assert code == 2 and out == ""  # numbers was never materialized; --no-deps won't run it
    assert "'numbers'" in err and "no materialization" in err
    cli(capsys, "run", basic, "numbers")
    code, doc = cli_json(capsys, "run", basic, "total", "--no-deps", "--tag", "team=data")
    assert code == 0 and doc["value"] == 6
    _, shown = cli_json(capsys, "show", basic, doc["run_id"])
    assert shown["tags"] == {"team": "data"}
    code, _, err = cli(capsys, "run", basic, "total", "--tag", "oops")
    assert code == 2 and "KEY=VALUE" in err


def test_detach_prints_the_run_id(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    code, out, _ = cli(capsys, "run", basic, "total", "--detach")
    run_id = out.splitlines()[0]
    assert code == 0
    _, shown = cli_json(capsys, "show", basic, run_id)
    assert shown["run_id"] == run_id and shown["status"] == "succeeded"


def test_run_everything_when_no_asset_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(
        tmp_path,
        """
        @fs.asset
        def a():
            return 1

        @fs.asset
        def b(a):
            return a + 1

        pipeline = fs.Pipeline("cli_all", [a, b], store=STORE)
    """,
    )
    code, doc = cli_json(capsys, "run", spec)
    assert code == 0 and doc["value"] == {"a": 1, "b": 2}


# --- loading and usage errors -----------------------------------------------------------------


def test_a_missing_file_or_attribute_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, basic: str
) -> None:
    code, _, err = cli(capsys, "run", str(tmp_path / "nope.py"), "total")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = cli(capsys, "run", basic.replace(":pipeline", ":nothing"), "total")
    assert code == 2 and "not a flowstone Pipeline" in err and "pipeline" in err
    code, _, err = cli(capsys, "run", basic, "no_such_asset")
    assert code == 2 and "no asset named 'no_such_asset'" in err


def test_a_cycle_exits_2_naming_the_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(
        tmp_path,
        """
        @fs.asset
        def a(c):
            return c

        @fs.asset
        def b(a):
            return a

        @fs.asset
        def c(b):
            return b

        pipeline = fs.Pipeline("cli_cycle", [a, b, c], store=STORE)
    """,
    )
    code, out, err = cli(capsys, "graph", spec)
    assert code == 2 and out == ""
    assert "cycle" in err and "a -> b -> c -> a" in err.replace("'", "")
    assert "Traceback" not in err


def test_an_error_inside_the_pipeline_file_exits_2_and_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(tmp_path, "import flowstone_module_that_does_not_exist\n")
    code, _, err = cli(capsys, "graph", spec)
    assert code == 2
    assert "cannot load pipeline" in err and "flowstone_module_that_does_not_exist" in err
    assert "Traceback" not in err
    code, _, err = cli(capsys, "--debug", "graph", spec)
    assert code == 2 and "Traceback" in err
    code, _, err = cli(capsys, "graph", spec, "--debug")
    assert code == 2 and "Traceback" in err


def test_argparse_errors_exit_2(
    capsys: pytest.CaptureFixture[str], basic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    # An unknown command makes the CLI load plugin commands; keep installed ones out.
    monkeypatch.setattr(metadata, "entry_points", lambda **_: metadata.EntryPoints(()))
    assert cli(capsys, "no-such-command")[0] == 2
    assert cli(capsys, "run")[0] == 2
    code, _, err = cli(capsys, "graph", basic, "--format", "png")
    assert code == 2 and "invalid choice" in err
    assert cli(capsys)[0] == 2
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "backfill" in out and "exit codes" in out


def test_unknown_executor_exits_2_with_the_pip_install_hint(
    capsys: pytest.CaptureFixture[str], basic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    # Whatever is installed here, this machine "has no executor plugins".
    monkeypatch.setattr(metadata, "entry_points", lambda **_: metadata.EntryPoints(()))
    code, out, err = cli(capsys, "run", basic, "total", "--executor", "celery")
    assert code == 2 and out == ""
    assert "pip install flowstone-celery" in err and "inprocess" in err


def test_executor_override_is_used_for_the_run(
    capsys: pytest.CaptureFixture[str], basic: str
) -> None:
    code, doc = cli_json(capsys, "run", basic, "total", "--executor", "inprocess")
    assert code == 0 and doc["value"] == 6


# --- reading state ----------------------------------------------------------------------------


def test_get_and_status(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    code, out, err = cli(capsys, "get", basic, "total")
    assert code == 1 and "no materialization" in err
    code, out, _ = cli(capsys, "status", basic, "total")
    assert code == 0 and "never materialized" in out
    cli(capsys, "run", basic, "total")
    code, out, _ = cli(capsys, "get", basic, "total")
    assert code == 0 and out == "6\n"
    code, doc = cli_json(capsys, "get", basic, "numbers")
    assert doc == {"asset": "numbers", "partition": None, "value": [1, 2, 3]}
    code, out, _ = cli(capsys, "status", basic, "total")
    assert code == 0 and out.startswith("total: succeeded")
    _, doc = cli_json(capsys, "status", basic, "total")
    assert doc["status"] == "succeeded" and doc["materialization"]["asset"] == "total"


def test_graph_formats(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    code, out, _ = cli(capsys, "graph", basic)
    assert code == 0 and "total" in out and "numbers" in out
    _, mermaid, _ = cli(capsys, "graph", basic, "--format", "mermaid")
    assert mermaid.startswith("graph TD") and "numbers --> total" in mermaid
    _, dot, _ = cli(capsys, "graph", basic, "--format", "dot")
    assert dot.startswith("digraph") and "->" in dot


def test_invalidate_makes_the_next_run_recompute(
    capsys: pytest.CaptureFixture[str], basic: str
) -> None:
    cli(capsys, "run", basic, "total")
    code, out, _ = cli(capsys, "invalidate", basic, "total")
    assert code == 0 and "invalidated 1" in out
    _, doc = cli_json(capsys, "run", basic, "total")
    assert {m["asset"]: m["reused"] for m in doc["materializations"]} == {
        "numbers": True,
        "total": False,
    }


def test_invalidate_all_partitions(capsys: pytest.CaptureFixture[str], daily: str) -> None:
    cli(capsys, "backfill", daily, "daily", "--partitions", "2024-01-01,2024-01-02")
    _, doc = cli_json(capsys, "invalidate", daily, "daily", "--all-partitions")
    assert doc["invalidated"] == 2 and doc["all_partitions"] is True
    code, _, err = cli(capsys, "invalidate", daily, "daily", "-p", "2024-01-01", "--all-partitions")
    assert code == 2 and "not allowed with" in err


def test_runs_and_show(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    _, ok = cli_json(capsys, "run", basic, "total")
    _, bad = cli_json(capsys, "run", basic, "broken")
    code, doc = cli_json(capsys, "runs", basic)
    assert code == 0 and [r["run_id"] for r in doc["runs"]] == [bad["run_id"], ok["run_id"]]
    _, doc = cli_json(capsys, "runs", basic, "--status", "failed")
    assert [r["run_id"] for r in doc["runs"]] == [bad["run_id"]]
    _, doc = cli_json(capsys, "runs", basic, "--limit", "1")
    assert len(doc["runs"]) == 1
    code, out, _ = cli(capsys, "runs", basic)
    assert ok["run_id"] in out and "STATUS" in out

    code, shown = cli_json(capsys, "show", basic, bad["run_id"])
    assert code == 0 and shown["status"] == "failed"
    assert {s["asset"]: s["state"] for s in shown["steps"]} == {
        "numbers": "succeeded",
        "broken": "failed",
    }
    code, out, _ = cli(capsys, "show", basic, ok["run_id"], "--value")
    assert code == 0 and "value: 6" in out
    code, _, err = cli(capsys, "show", basic, "no-such-run")
    assert code == 2 and "no run 'no-such-run'" in err


def test_lineage_up_and_downstream(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    _, run = cli_json(capsys, "run", basic, "total")
    numbers_id = next(m["id"] for m in run["materializations"] if m["asset"] == "numbers")
    code, doc = cli_json(capsys, "lineage", basic, "total")
    assert code == 0 and doc["direction"] == "upstream"
    assert [m["id"] for m in doc["materializations"]] == [numbers_id]
    _, doc = cli_json(capsys, "lineage", basic, "numbers", "--downstream")
    assert [m["asset"] for m in doc["materializations"]] == ["total"]
    code, out, _ = cli(capsys, "lineage", basic, "total", "--recursive")
    assert code == 0 and "numbers" in out
    code, _, err = cli(capsys, "lineage", basic, "booked")
    assert code == 1 and "run it first" in err


def test_cancel_and_resume(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    _, waiting = cli_json(capsys, "run", basic, "booked")
    code, out, _ = cli(capsys, "cancel", basic, waiting["run_id"])
    assert code == 0 and "cancelled" in out
    code, out, _ = cli(capsys, "cancel", basic, waiting["run_id"])
    assert code == 1 and "already cancelled" in out
    _, ok = cli_json(capsys, "run", basic, "total")
    code, _, err = cli(capsys, "resume", basic, ok["run_id"])
    assert code == 2 and "only failed or cancelled runs" in err
    _, failed = cli_json(capsys, "run", basic, "broken")
    code, doc = cli_json(capsys, "resume", basic, failed["run_id"])
    assert code == 1 and doc["run_id"] == failed["run_id"] and doc["status"] == "failed"


# --- approvals (in one process; across processes in test_cli_processes.py) --------------------


def test_a_waiting_run_exits_0_and_names_the_approval(
    capsys: pytest.CaptureFixture[str], basic: str
) -> None:
    code, out, _ = cli(capsys, "run", basic, "booked")
    assert code == 0
    assert "waiting" in out.splitlines()[0]
    assert "waiting for approval 1 on asset 'trade': large trade" in out
    assert f"flowstone approve {basic} 1" in out
    _, doc = cli_json(capsys, "approvals", basic)
    assert [(a["id"], a["asset"], a["status"]) for a in doc["approvals"]] == [
        (1, "trade", "pending")
    ]


def test_reject_exits_0_and_the_run_fails(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    _, run = cli_json(capsys, "run", basic, "booked")
    assert run["status"] == "waiting" and run["approvals"][0]["id"] == 1
    code, out, _ = cli(capsys, "reject", basic, "1", "--by", "alice", "--reason", "too big")
    assert code == 0
    assert "rejected approval 1 (by alice)" in out and "failed" in out
    _, shown = cli_json(capsys, "show", basic, run["run_id"])
    assert shown["status"] == "failed"
    _, doc = cli_json(capsys, "approvals", basic, "--status", "rejected")
    assert doc["approvals"][0]["decided_by"] == "alice"
    assert doc["approvals"][0]["reason"] == "too big"
    code, _, err = cli(capsys, "reject", basic, "1")
    assert code == 2 and err.startswith("error: ")


def test_approve_by_run_and_asset(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    _, run = cli_json(capsys, "run", basic, "booked")
    code, doc = cli_json(
        capsys, "approve", basic, "--run-id", run["run_id"], "--asset", "trade", "--by", "bob"
    )
    assert code == 0 and doc["status"] == "succeeded" and doc["value"] == 60
    code, _, err = cli(capsys, "approve", basic)
    assert code == 2 and "--run-id" in err
    code, _, err = cli(capsys, "approve", basic, "1", "--asset", "trade")
    assert code == 2 and "not both" in err


def test_approvals_listing_by_status(capsys: pytest.CaptureFixture[str], basic: str) -> None:
    code, out, _ = cli(capsys, "approvals", basic)
    assert code == 0 and "no pending approvals" in out
    cli(capsys, "run", basic, "booked")
    cli(capsys, "approve", basic, "1")
    _, doc = cli_json(capsys, "approvals", basic, "--status", "all")
    assert [a["status"] for a in doc["approvals"]] == ["approved"]
    code, out, _ = cli(capsys, "approvals", basic, "--status", "approved")
    assert "trade" in out and "large trade" in out


# --- backfill ----------------------------------------------------------------------------------


def test_backfill_summary_and_failures(capsys: pytest.CaptureFixture[str], daily: str) -> None:
    code, out, err = cli(
        capsys,
        "backfill",
        daily,
        "daily",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-05",
        "--parallel",
        "2",
    )
    assert code == 1  # the 4th fails
    assert "4 succeeded, 1 failed, 0 skipped" in out
    assert "2024-01-04" in out and "no data on the 4th" in out
    assert "backfill 5/5" in err and "\r" not in err  # plain lines when not a terminal
    assert "2024-01-04 failed" in err

    code, doc = cli_json(
        capsys, "backfill", daily, "daily", "--partitions", "2024-01-01,2024-01-02,2024-01-06"
    )
    assert code == 0 and doc["ok"] is True
    assert doc["succeeded"] == ["2024-01-06"]
    assert sorted(doc["skipped"]) == ["2024-01-01", "2024-01-02"]
    assert set(doc) >= {"failed", "errors", "run_ids", "parallel", "seconds"}

    _, doc = cli_json(capsys, "backfill", daily, "daily", "-p", "2024-01-01", "--force")
    assert doc["succeeded"] == ["2024-01-01"]


def test_backfill_draws_one_updating_line_on_a_terminal(
    capsys: pytest.CaptureFixture[str], daily: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = main(["backfill", daily, "daily", "--start", "2024-01-05", "--end", "2024-01-07"])
    assert code == 0
    shown = terminal.getvalue()
    assert shown.count("\r") == 3 and "backfill 3/3" in shown and shown.endswith("\n")
    assert "3 succeeded" in capsys.readouterr().out


def test_backfill_usage_errors(capsys: pytest.CaptureFixture[str], daily: str, basic: str) -> None:
    code, _, err = cli(
        capsys, "backfill", daily, "daily", "--start", "2024-01-01", "--partitions", "2024-01-02"
    )
    assert code == 2 and "not both" in err
    code, _, err = cli(capsys, "backfill", daily, "daily", "--parallel", "0")
    assert code == 2 and "--parallel" in err
    code, _, err = cli(capsys, "backfill", basic, "total")
    assert code == 2 and "declares no partitions" in err


# --- values that JSON has no spelling for -------------------------------------------------------


def test_json_renders_dates_decimals_bytes_and_tuples_readably(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(
        tmp_path,
        """
        @fs.asset
        def odd():
            return {
                "day": date(2024, 1, 5),
                "price": Decimal("1.10"),
                "raw": b"hi",
                "pair": (1, "a"),
                "wait": timedelta(minutes=2),
                "nan": float("nan"),
                date(2024, 1, 6): "date key",
            }

        pipeline = fs.Pipeline("cli_odd", [odd], store=STORE)
    """,
    )
    code, out, _ = cli(capsys, "run", spec, "odd", "--json")
    assert code == 0
    doc = json.loads(out)  # strict JSON: no NaN literal
    assert doc["value"] == {
        "day": "2024-01-05",
        "price": "1.10",
        "raw": "aGk=",
        "pair": [1, "a"],
        "wait": 120.0,
        "nan": "NaN",
        "2024-01-06": "date key",
    }
    code, out, _ = cli(capsys, "get", spec, "odd")
    assert json.loads(out)["raw"] == "aGk="


def test_a_long_value_is_cut_in_the_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(
        tmp_path,
        """
        @fs.asset
        def big():
            return list(range(5000))

        pipeline = fs.Pipeline("cli_big", [big], store=STORE)
    """,
    )
    code, out, _ = cli(capsys, "run", spec, "big")
    value_line = next(line for line in out.splitlines() if line.startswith("value: "))
    assert code == 0 and len(value_line) < 400 and "chars in all" in value_line


# --- health ---------------------------------------------------------------------------------


def test_health_ok_and_not_ok(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, basic: str
) -> None:
    code, out, _ = cli(capsys, "health", basic)
    assert code == 0 and "store: ok" in out and "healthy" in out
    _, doc = cli_json(capsys, "health", basic)
    assert doc["ok"] is True
    spec = write(
        tmp_path,
        """
        class NoWorkers:
            name = "noworkers"
            blocking = False

            def dispatch(self, pipeline, run_id, steps):
                pass

            def close(self):
                pass

            def health(self):
                return {"ok": False, "workers": 0}

        @fs.asset
        def a():
            return 1

        pipeline = fs.Pipeline("cli_sick", [a], store=STORE, executor=NoWorkers())
    """,
        name="sick.py",
    )
    code, out, _ = cli(capsys, "health", spec)
    assert code == 1 and "UNHEALTHY" in out
    code, doc = cli_json(capsys, "health", spec)
    assert code == 1 and doc["ok"] is False and doc["executor"]["workers"] == 0
