"""The runnable examples in ``examples/`` do what their docs say.

Each test loads an example the way the CLI does (``fs.load_pipeline("FILE.py:pipeline")``)
with ``FLOWSTONE_HOME`` pointing at a temporary directory, so every test gets a fresh
module, a fresh Pipeline and its own SQLite store; values are checked against what the
example's data implies, computed independently here.
"""

from __future__ import annotations

import json
import runpy
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import flowstone as fs

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
ALL = [
    "quickstart",
    "daily_etl",
    "routing",
    "parallel_join",
    "scatter_jsonl",
    "approval",
    "signal_gate",
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty FLOWSTONE_HOME; no store URL or executor leaking in from the environment."""
    monkeypatch.setenv("FLOWSTONE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWSTONE_DATABASE_URL", raising=False)
    monkeypatch.delenv("FLOWSTONE_EXECUTOR", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_pipeline adds examples/ to it
    return tmp_path / "home"


class Loaded:
    def __init__(self, pipeline: fs.Pipeline, module: ModuleType) -> None:
        self.pipeline = pipeline
        self.module = module


@pytest.fixture
def load(home: Path) -> Iterator[Any]:
    """``load("quickstart")`` -> the example's pipeline and module, imported afresh."""
    loaded: list[tuple[fs.Pipeline, str]] = []

    def _load(name: str) -> Loaded:
        _forget(name)  # load_pipeline caches modules by path; each test wants its own
        pipeline = fs.load_pipeline(f"{EXAMPLES / name}.py:pipeline")
        module_name = next(iter(pipeline.dag.assets.values())).fn.__module__
        loaded.append((pipeline, module_name))
        return Loaded(pipeline, sys.modules[module_name])

    yield _load
    for pipeline, module_name in loaded:
        pipeline.close()
        sys.modules.pop(module_name, None)


def _forget(name: str) -> None:
    for key in [k for k in sys.modules if k.startswith(f"flowstone_user_{name}_")]:
        del sys.modules[key]


def test_quickstart_totals_the_doubled_numbers_in_the_store_under_home(
    load: Any, home: Path
) -> None:
    ex = load("quickstart")
    result = ex.pipeline.run("total")
    assert (result.status, result.value) == ("succeeded", 30)
    assert sorted(m.asset for m in result.materializations) == ["doubled", "numbers", "total"]
    assert ex.pipeline.get("doubled") == [2, 4, 6, 8, 10]
    assert (home / "flowstone.db").is_file()  # the default store followed FLOWSTONE_HOME
    again = ex.pipeline.run("total")
    assert again.value == 30
    assert all(m.run_id == result.run_id for m in again.materializations)  # reused


def _expected_revenue(module: ModuleType, day: date) -> tuple[int, float]:
    paid = [
        o
        for o in module.fake_orders(day)
        if o["status"] == "paid" and o["customer"] != "test-account"
    ]
    return len(paid), round(sum(float(o["amount"]) for o in paid), 2)


def test_daily_etl_backfills_a_week_with_trailing_revenue(load: Any) -> None:
    ex = load("daily_etl")
    days = [date(2024, 3, 1) + timedelta(days=i) for i in range(7)]
    seen: list[str] = []
    result = ex.pipeline.backfill(
        "trailing_revenue",
        start=days[0],
        end=days[-1],
        parallel=2,
        progress=lambda p: seen.append(p.status),
    )
    assert (sorted(result.succeeded), result.failed, result.skipped) == (days, [], [])
    assert seen == ["succeeded"] * 7
    previous: float | None = None
    for day in days:
        orders, revenue = _expected_revenue(ex.module, day)
        row = ex.pipeline.get("trailing_revenue", day)
        assert (row["day"], row["orders"], row["revenue"]) == (day.isoformat(), orders, revenue)
        if previous is None:
            assert (row["change"], row["trailing_2d"]) == (None, revenue)
        else:
            assert row["change"] == round(revenue - previous, 2)
            assert row["trailing_2d"] == round(revenue + previous, 2)
        previous = revenue
    # the first day has no day before it inside the partition set
    assert ex.pipeline.status("previous_revenue", days[0]) == "skipped"
    assert ex.pipeline.status("previous_revenue", days[1]) == "succeeded"
    again = ex.pipeline.backfill("trailing_revenue", start=days[0], end=days[-1])
    assert sorted(again.skipped) == days  # already materialized


def test_routing_sends_each_order_down_one_branch(load: Any) -> None:
    ex = load("routing")
    expected = {"A-1001": ("small", 37.5), "A-1002": ("large", 8400.0), "A-1003": ("small", 84.96)}
    for order_id, (route, total) in expected.items():
        plan = ex.pipeline.run("fulfilment", partition=order_id).value
        assert (plan["order"], plan["route"], plan["total"]) == (order_id, route, total)
        other = "large" if route == "small" else "small"
        assert ex.pipeline.status(route, order_id) == "succeeded"
        assert ex.pipeline.status(other, order_id) == "skipped"
    assert ex.pipeline.get("fulfilment", "A-1002")["checks"] == ["credit ok"]


def test_routing_reports_an_unknown_order(load: Any) -> None:
    ex = load("routing")
    result = ex.pipeline.run("fulfilment", partition="A-9999")
    assert result.status == "failed"
    assert "no order 'A-9999'" in (result.error or "")
    with pytest.raises(fs.AssetFailedError):
        _ = result.value


def test_parallel_join_merges_three_branches(load: Any) -> None:
    ex = load("parallel_join")
    result = ex.pipeline.run("briefing", partition="Lisbon")
    b = result.value
    assert result.status == "succeeded"
    assert b["city"] == "Lisbon"
    assert b["headlines"] == ["Tram 28 gets new cars", "Record tourist season"]
    assert b["forecast"] == {"high_c": round(30 - 38.72 / 3, 1), "rain": False}
    assert b["map"].startswith("https://maps.example/tile/") and b["news_error"] is None


def test_parallel_join_tolerates_a_failed_news_branch(load: Any) -> None:
    ex = load("parallel_join")
    result = ex.pipeline.run("briefing", partition="Reykjavik")
    b = result.value  # the join succeeded though a branch failed
    assert b["headlines"] == [] and "no edition for Reykjavik" in b["news_error"]
    assert ex.pipeline.status("briefing", "Reykjavik") == "succeeded"
    assert ex.pipeline.status("front_pages", "Reykjavik") == "failed"
    # the join ran: the run succeeded, with the failed branch recorded as tolerated
    assert (result.status, result.stored_status) == ("succeeded", "failed")
    assert [f.asset for f in result.partial_failures] == ["front_pages"]


def test_scatter_jsonl_indexes_every_page_and_counts_dead_ones(load: Any) -> None:
    ex = load("scatter_jsonl")
    lines = (EXAMPLES / "data" / "pages.jsonl").read_text(encoding="utf-8").splitlines()
    pages = [json.loads(line) for line in lines]
    live = [p for p in pages if p["status"] == 200]
    terms = Counter(w for p in live for w in p["text"].split() if w not in ex.module.STOP_WORDS)
    result = ex.pipeline.run("site_report")
    assert result.status == "succeeded"
    index = ex.pipeline.get("page_stats")
    assert index["pages"] == len(live) == 196
    assert index["failed"] == len(pages) - len(live) == 4
    assert index["words"] == sum(len(p["text"].split()) for p in live)
    assert index["top_terms"] == [t for t, _ in terms.most_common(5)]
    assert result.value.startswith("196 pages indexed (4 failed)")


def test_approval_pauses_large_trades_until_approved(load: Any) -> None:
    ex = load("approval")
    small = ex.pipeline.run("booking", partition="T-1001")
    assert small.value == {"ticket": "T-1001", "booked": True, "notional": 50625.0}
    large = ex.pipeline.run("booking", partition="T-1002")
    assert large.status == "waiting"
    [pending] = ex.pipeline.approvals()
    assert (pending.run_id, pending.asset, pending.partition) == (large.run_id, "trade", "T-1002")
    assert "exceeds the 1,000,000 limit" in pending.message
    with pytest.raises(fs.ExecutionError, match=f"approvals {pending.id}"):
        _ = large.value
    approved = ex.pipeline.approve(pending.id, by="tester")
    assert approved.run_id == large.run_id
    assert approved.value == {"ticket": "T-1002", "booked": True, "notional": 1924000.0}
    assert ex.pipeline.approvals() == []
    [decided] = ex.pipeline.approvals(status=None)
    assert decided.decided_by == "tester"


def test_approval_rejected_trade_is_not_booked(load: Any) -> None:
    ex = load("approval")
    run = ex.pipeline.run("booking", partition="T-1002")
    rejected = ex.pipeline.reject(
        run_id=run.run_id, asset="trade", partition="T-1002", by="tester", reason="too big"
    )
    assert rejected.status == "failed"
    assert ex.pipeline.status("trade", "T-1002") == "failed"
    assert not ex.pipeline.exists("booking", "T-1002")


def test_signal_gate_resumes_with_the_callback_payload(load: Any, home: Path) -> None:
    ex = load("signal_gate")
    run = ex.pipeline.run("index_entry", partition="doc-2")
    assert run.status == "waiting"
    # the job reached the "service" through a file another process could read
    job_file = home / "embedding-outbox" / "doc-2.json"
    assert job_file.stat().st_mode & 0o077 == 0  # the token is for its owner only
    job = ex.module.take_job("doc-2")
    token = job["callback_token"]
    assert job["document"]["id"] == "doc-2" and token.startswith("fsg_")
    assert not job_file.exists()
    resumed = ex.pipeline.signal(token, {"vector": [0.5, 0.25, 0.125, 1]})
    assert resumed.run_id == run.run_id
    assert resumed.value == {
        "id": "doc-2",
        "dimensions": 4,
        "preview": "Signal gates pause a run until",
    }
    assert ex.pipeline.get("embedding", "doc-2")["vector"] == [0.5, 0.25, 0.125, 1.0]
    with pytest.raises(fs.SignalError):
        ex.pipeline.signal(token, {"vector": [1]})  # a token works once


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("quickstart", "total = 30"),
        ("daily_etl", "backfill: 7 succeeded, 0 failed, 0 skipped"),
        ("routing", "A-1002: total= 8400.00  route=large"),
        ("parallel_join", "news: unavailable (front_pages[Reykjavik] failed"),
        ("scatter_jsonl", "196 pages indexed (4 failed)"),
        ("approval", "flowstone approve examples/approval.py:pipeline 1 --by you"),
        ("signal_gate", "flowstone signal examples/signal_gate.py:pipeline fsg_"),
    ],
)
def test_example_runs_as_a_script(
    name: str, expected: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    namespace["pipeline"].close()
    assert expected in capsys.readouterr().out
    assert (home / "flowstone.db").is_file()


def test_every_example_is_tested() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(ALL)
