"""Docs that match the code (seed: the Elixir docs promised a DSL that did not exist).

Every ``fs.Name`` the docs use is exported, every ``flowstone <command>`` they show exists,
and every ``FLOWSTONE_*`` setting they document is read by some package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import flowstone as fs
from flowstone.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SOURCES = [*ROOT.glob("*/*/src/**/*.py"), *ROOT.glob("integration-tests/**/*.py")]
# subcommands that plugins add; checked only when the plugin is installed
PLUGIN_COMMANDS = {"worker": "flowstone_celery", "db": "flowstone_io_postgres"}


def _docs() -> list[tuple[Path, str]]:
    return [(p, p.read_text(encoding="utf-8")) for p in DOC_FILES if p.exists()]


def test_docs_exist() -> None:
    names = {p.name for p in DOC_FILES}
    for required in ("README.md", "index.md", "concepts.md", "configuration.md", "cli.md"):
        assert required in names


@pytest.mark.parametrize(("path", "text"), _docs(), ids=lambda v: getattr(v, "name", ""))
def test_seed_docs_match_the_code_public_names(path: Path, text: str) -> None:
    used = set(re.findall(r"\bfs\.([A-Za-z_][A-Za-z0-9_]*)", text))
    missing = sorted(n for n in used if not hasattr(fs, n))
    assert not missing, f"{path.name} uses fs.{missing} which flowstone does not export"


def _commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("path", "text"), _docs(), ids=lambda v: getattr(v, "name", ""))
def test_docs_show_only_existing_commands(path: Path, text: str) -> None:
    commands = _commands()
    blocks = "\n".join(re.findall(r"```(?:bash|console|sh|shell)?\n(.*?)```", text, re.S))
    shown = set(re.findall(r"(?:^|[\s`$])flowstone ([a-z][a-z-]+)", blocks, re.M))
    unknown = set()
    for cmd in shown:
        if cmd in commands:
            continue
        plugin = PLUGIN_COMMANDS.get(cmd)
        if plugin is not None:
            try:
                __import__(plugin)
            except ImportError:
                continue  # documented plugin command; the plugin is not installed here
        unknown.add(cmd)
    assert not unknown, f"{path.name} shows `flowstone {sorted(unknown)}` which does not exist"


def test_documented_environment_variables_are_read() -> None:
    code = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)
    documented = set()
    for _, text in _docs():
        documented |= set(re.findall(r"\bFLOWSTONE_[A-Z_]+\b", text))
    unread = sorted(
        v for v in documented if v not in code and v.removeprefix("FLOWSTONE_").lower() not in code
    )
    assert not unread, f"docs mention settings no code reads: {unread}"


@pytest.mark.parametrize(("path", "text"), _docs(), ids=lambda v: getattr(v, "name", ""))
def test_docs_links_stay_inside_the_site(path: Path, text: str) -> None:
    if path.name == "README.md":
        return  # the README is read on the repository page, where ../ links work
    outside = re.findall(r"\]\((\.\./[^)]*)\)", text)
    assert not outside, f"{path.name} links outside docs/ (mkdocs --strict fails): {outside}"
    for target in re.findall(r"\]\(([\w./-]+\.md)(?:#[^)]*)?\)", text):
        assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
