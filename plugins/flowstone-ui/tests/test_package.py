"""Package surface, the CLI, auth helpers, layout and previews."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from flowstone.errors import UsageError

HERE = Path(__file__).parent


def test_public_api_is_pinned() -> None:
    import flowstone_ui

    assert flowstone_ui.__all__ == ["RunFilter", "UIQueries", "__version__", "create_app",
                                    "queries_for"]


def test_the_ui_command_is_a_flowstone_cli_plugin() -> None:
    found = [e for e in entry_points(group="flowstone.cli") if e.name == "ui"]
    assert [e.value for e in found] == ["flowstone_ui.cli:register"]
    out = subprocess.run([sys.executable, "-m", "flowstone", "ui", "--help"],
                         capture_output=True, text=True, check=True)
    assert "FILE_OR_MODULE:PIPELINE" in out.stdout and "--port" in out.stdout


def test_serve_prints_the_url_with_a_generated_token_and_serves(tmp_path: Path) -> None:
    spec = tmp_path / "p.py"
    spec.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import flowstone as fs\n"
        "from ui_pipelines import ASSETS\n"
        f"pipeline = fs.Pipeline('cli_ui', ASSETS, store='sqlite:///{tmp_path / 'r.db'}')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FLOWSTONE_UI_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "flowstone_ui", f"{spec}:pipeline",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("FlowStone UI: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        base, token = url.split("?token=")
        assert len(token) >= 32
        with urllib.request.urlopen(base + "api/pipelines", timeout=10) as response:
            assert json.load(response)[0]["name"] == "cli_ui"
        request = urllib.request.Request(base + "api/runs/x/cancel", data=b'{"by":"x"}',
                                         method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        refused.value.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_tokens_from_the_environment_must_be_long(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowstone_ui.auth import resolve_token

    monkeypatch.setenv("FLOWSTONE_UI_TOKEN", "short")
    with pytest.raises(UsageError, match="at least 16"):
        resolve_token()
    monkeypatch.setenv("FLOWSTONE_UI_TOKEN", "x" * 20)
    assert resolve_token() == ("x" * 20, False)
    monkeypatch.delenv("FLOWSTONE_UI_TOKEN")
    token, generated = resolve_token()
    assert generated and len(token) >= 40


def test_pipelines_on_different_stores_are_refused(tmp_path: Path, pipeline: Any) -> None:
    from ui_pipelines import ASSETS

    import flowstone as fs
    from flowstone_ui import create_app

    other = fs.Pipeline("elsewhere", ASSETS, store=f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with pytest.raises(UsageError, match="different run stores"):
            create_app([pipeline, other], token="t" * 20)
        with pytest.raises(UsageError, match="unique"):
            create_app([pipeline, pipeline], token="t" * 20)
    finally:
        other.close()


def test_previews_are_bounded() -> None:
    from flowstone_ui.preview import MAX_CHARS, preview

    kind, text, cut = preview(list(range(1_000_000)))
    assert kind == "list" and cut and "999950 more items" in text
    kind, text, cut = preview({"a": "x" * 100_000})
    assert cut and len(text) <= MAX_CHARS + 10
    assert preview({"n": 1}) == ("dict", '{\n "n": 1\n}', False)
    assert preview(b"\x00" * 10)[1].startswith('"<10 bytes')


def test_layout_puts_each_asset_after_its_deepest_dependency(pipeline: Any) -> None:
    from flowstone_ui.graph import layout

    g = layout(pipeline.dag, {"numbers": "succeeded"})
    layer = {n.name: n.layer for n in g.nodes}
    assert layer["numbers"] == 0 and layer["doubled"] == 1 and layer["size"] == 2
    assert layer["handled"] == 4
    places = {(n.x, n.y) for n in g.nodes}
    assert len(places) == len(g.nodes), "no two assets drawn on top of each other"
    assert all(0 <= n.x < g.width and 0 <= n.y < g.height for n in g.nodes)


def test_only_our_own_scripts_are_served(pipeline: Any) -> None:
    from ui_helpers import client_for

    client = client_for(pipeline)
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "FlowStone UI"
    page = client.get("/pipelines/ui_unit/graph").text
    assert page.count("<script") == 1 and 'src="/static/ui.js"' in page
    assert "http://" not in page and "https://" not in page
