"""Docs that match the code, in the details (seed 003 / 004: docs promised APIs and plugins
that did not exist; DESIGN.md section 8). Extends ``test_docs.py`` (which checks ``fs.*``
names, commands and settings): here every ``pipeline.<method>(..., keyword=...)`` call in the
docs' Python examples is checked against the real signature, and every distribution the docs
tell people to install, or the plugin registry's install hints name, exists in this
repository (no "stubs presented as ready").
"""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from pathlib import Path

import flowstone as fs
from flowstone import registry

ROOT = Path(__file__).resolve().parents[3]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
RECEIVER = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:fs\.)?Pipeline\(")


def _call_args(text: str, start: int) -> str | None:
    """The text between the parenthesis at ``start`` and its match (None if unbalanced)."""
    depth = 0
    for i in range(start, min(len(text), start + 2000)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def _keywords(args: str) -> list[str] | None:
    """Keyword names of a call's argument text; None when it cannot be read as Python."""
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except SyntaxError:
        return None
    assert isinstance(call, ast.Call)
    return [k.arg for k in call.keywords if k.arg is not None]


def _pipeline_calls(text: str) -> list[tuple[str, list[str] | None]]:
    """``(method, keywords)`` of each ``<pipeline>.<method>(...)`` in ``text`` (code blocks
    and inline code alike); the receivers are ``pipeline`` and any name the text assigns
    ``fs.Pipeline(...)`` to. ``keywords`` is None for an excerpt that is not Python."""
    names = {"pipeline"} | set(RECEIVER.findall(text))
    pattern = re.compile(rf"\b(?:{'|'.join(sorted(names))})\.([A-Za-z_][A-Za-z0-9_]*)\(")
    calls = []
    for m in pattern.finditer(text):
        args = _call_args(text, m.end() - 1)
        calls.append((m.group(1), None if args is None else _keywords(args)))
    return calls


def _documented_calls() -> list[tuple[str, str, list[str] | None]]:
    out = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        out += [(path.name, m, kws) for m, kws in _pipeline_calls(text)]
    return out


def _accepts(method: str, keywords: list[str]) -> list[str]:
    """The keywords ``Pipeline.<method>`` does not accept ([] when it takes ``**kwargs``)."""
    params = inspect.signature(getattr(fs.Pipeline, method)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    known = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return [k for k in keywords if k not in known]


def test_seed_docs_call_only_real_pipeline_methods_with_real_keywords() -> None:
    """Seed 003 ("docs that match the code"): a renamed method or keyword fails here."""
    calls = _documented_calls()
    assert len(calls) > 30  # the docs really show pipeline calls (not a vacuous check)
    assert sum(1 for *_, kws in calls if kws) > 10  # ...many of them with keywords
    wrong = []
    for doc, method, keywords in calls:
        if not callable(getattr(fs.Pipeline, method, None)) or isinstance(
                inspect.getattr_static(fs.Pipeline, method), property):
            wrong.append(f"{doc}: pipeline.{method}(...) is not a Pipeline method")
            continue
        bad = _accepts(method, keywords or [])
        if bad:
            wrong.append(f"{doc}: pipeline.{method}() has no keyword(s) {bad}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_checker_sees_a_renamed_method_and_keyword() -> None:
    text = "etl = fs.Pipeline('x', [])\n`etl.run('a', partiton='p')` and `pipeline.runn('a')`"
    assert _pipeline_calls(text) == [("run", ["partiton"]), ("runn", [])]
    assert _accepts("run", ["partiton"]) == ["partiton"] and not hasattr(fs.Pipeline, "runn")


def _repo_distributions() -> set[str]:
    names = set()
    found = [*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("plugins/*/pyproject.toml")]
    for pyproject in found:
        names.add(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"])
    return names


def _named_distributions() -> dict[str, set[str]]:
    """``{distribution: where}`` for every flowstone distribution the docs tell people to
    ``pip install``, list in a table of plugins, or the registry's install hints name."""
    where: dict[str, set[str]] = {}
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        found = set()
        for line in re.findall(r"pip install[^\n`]*", text):
            found |= set(re.findall(r"\bflowstone-[a-z0-9-]*[a-z0-9]", line))
        found |= set(re.findall(r"^\|\s*`?(flowstone-[a-z0-9-]*[a-z0-9])`?\s*\|", text, re.M))
        for name in found:
            where.setdefault(name, set()).add(path.name)
    for _, _, dist in registry._KNOWN_PLUGINS:
        where.setdefault(dist, set()).add("flowstone.registry install hints")
    return where


def test_seed_every_distribution_the_docs_name_exists_in_the_repo() -> None:
    """Seed 004 ("stubs presented as ready"): docs/plugins.md and the install hints may
    only point at plugins that are really here."""
    named = _named_distributions()
    assert {"flowstone-core", "flowstone-celery", "flowstone-io-postgres"} <= set(named)
    missing = {d: sorted(w) for d, w in named.items() if d not in _repo_distributions()}
    assert not missing, f"named but not in packages/ or plugins/: {missing}"
