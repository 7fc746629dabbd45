"""A scatter whose items fail: failed by default, with the first item keys and errors shown
in the failure message, the run result and the CLI; ``context.item`` names the real attribute."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from conftest import Counter, PipelineFactory

import flowstone as fs
from flowstone.cli import main


@fs.asset
def hosts() -> list[dict[str, str]]:
    return [{"host": f"db{i}"} for i in range(40)]


def test_all_items_failing_fails_the_asset_by_default(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    @fs.asset(scatter=fs.Scatter(items=lambda hosts: hosts, max_concurrent=1))
    def ping(context: fs.Context, hosts: list[dict[str, str]]) -> str:
        counter.hit(context.scatter_item["host"])
        raise ConnectionError(f"{context.scatter_item['host']} refused the connection")

    @fs.asset
    def report(ping: list[str]) -> int:
        return len(ping)

    p = make_pipeline([hosts, ping, report])
    result = p.run("report")
    assert result.status == "failed"
    step = next(s for s in result.steps if s.asset == "ping")
    assert step.state == "failed"
    assert not any(m.asset == "report" and m.state == "succeeded" for m in result.materializations)
    error = result.error or ""
    # the first failed item: its key (canonical JSON of the item) and its error
    assert 'item 0 (key {"host":"db0"}): ConnectionError: db0 refused the connection' in error
    assert "failure threshold of 0 failures (the default" in error
    assert counter.total() < 40  # the first failure stopped the scatter


def test_a_set_threshold_still_tolerates_failures(make_pipeline: PipelineFactory) -> None:
    @fs.asset(scatter=fs.Scatter(items=lambda hosts: hosts, failure_threshold=0.5))
    def ping(context: fs.Context, hosts: list[dict[str, str]]) -> str:
        if context.scatter_item["host"] == "db3":
            raise ConnectionError("db3 is down")
        return "ok"

    p = make_pipeline([hosts, ping])
    result = p.run("ping")
    assert result.status == "succeeded"
    assert result.value[3] is None and result.value.count("ok") == 39


def test_context_item_names_context_scatter_item(make_pipeline: PipelineFactory) -> None:
    @fs.asset(scatter=fs.Scatter(items=lambda hosts: hosts))
    def ping(context: fs.Context, hosts: list[dict[str, str]]) -> str:
        return str(context.item["host"])  # type: ignore[attr-defined]

    p = make_pipeline([hosts, ping])
    result = p.run("ping")
    assert result.status == "failed"
    assert "Context has no attribute 'item': the current scatter item is " in (result.error or "")
    assert "context.scatter_item" in (result.error or "")


def test_unencodable_item_results_fail_their_items(make_pipeline: PipelineFactory) -> None:
    @fs.asset(scatter=fs.Scatter(items=lambda: [1, 2, 3]))
    def wrap(context: fs.Context) -> object:
        return object() if context.scatter_item == 2 else context.scatter_item

    p = make_pipeline([wrap])
    result = p.run("wrap")
    assert result.status == "failed"
    assert "item 1 (key 2): EncodingError" in (result.error or "")


def _strings(doc: object) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        doc = list(doc.values())
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return []


FLOW = """
import flowstone as fs

@fs.asset(scatter=fs.Scatter(items=lambda: ["a", "b"]))
def fetch(context):
    raise TimeoutError(f"{context.scatter_item} timed out")

pipeline = fs.Pipeline("scatter_cli", [fetch], store=STORE)
"""


def test_cli_status_and_show_give_the_item_errors(
    tmp_path: Path, capsys: object
) -> None:
    path = tmp_path / "flow.py"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    path.write_text(f"STORE = {store!r}\n" + textwrap.dedent(FLOW), encoding="utf-8")
    spec = f"{path}:pipeline"
    assert main(["run", spec, "fetch", "--json"]) == 1
    out, _ = capsys.readouterr()  # type: ignore[attr-defined]
    run = json.loads(out)
    wanted = 'item 0 (key "a"): TimeoutError: a timed out'
    assert run["status"] == "failed" and any(wanted in s for s in _strings(run))
    assert main(["show", spec, run["run_id"]]) == 0
    out, _ = capsys.readouterr()  # type: ignore[attr-defined]
    assert wanted in out
    main(["status", spec, "fetch"])
    out, _ = capsys.readouterr()  # type: ignore[attr-defined]
    assert wanted in out
