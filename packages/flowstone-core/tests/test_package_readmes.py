"""Each distribution's README is its PyPI page: it says what the package is, how to install
it and the one setting it needs, and has no links that only work inside the repository."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = sorted(
    [*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("plugins/flowstone-*/pyproject.toml")]
)


@pytest.mark.parametrize("pyproject", PACKAGES, ids=lambda p: p.parent.name)
def test_the_readme_is_a_page_of_its_own(pyproject: Path) -> None:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = project["name"]
    assert project.get("readme") == "README.md", f"{name}: pyproject readme must be README.md"
    text = (pyproject.parent / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == f"# {name}", f"{name}: the README starts with its name as the title"
    what = next((line for line in lines[1:] if line.strip()), "")
    assert what and not what.startswith(("#", "```", "-")), f"{name}: say what it is first"
    assert re.search(rf"^pip install {re.escape(name)}\b", text, re.M), f"{name}: no install line"
    assert re.search(r"the one setting", text, re.I), f"{name}: name the one setting it needs"
    relative = re.findall(r"\]\((?!https?://|#)([^)]+)\)", text)
    assert not relative, f"{name}: links that break on PyPI: {relative}"
