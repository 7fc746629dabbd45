"""Every markdown table in the docs renders whole.

A blank line inside a table ends it: the rows after it render as a paragraph of pipes, or
(with a separator of their own) as a second table without a header. Each table here must be
one block: a header row, a separator row with as many columns, then rows of that width.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MARKDOWN = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "examples").glob("*.md"),
        *(ROOT / "plugins").glob("*/README.md"),
        *(ROOT / "packages").glob("*/README.md"),
    ]
)
_SEPARATOR_CELL = re.compile(r":?-{3,}:?")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _cells(row: str) -> list[str]:
    """The cells of a table row, split at pipes a backslash does not escape (as GFM does)."""
    body = row.strip().removeprefix("|")
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", body)]


def table_problems(text: str) -> list[str]:
    """What keeps each table of a markdown text from rendering whole (empty: all render)."""
    problems: list[str] = []
    blocks: list[tuple[int, list[str]]] = []
    in_fence = False
    current: list[str] = []
    start = 0
    for number, line in enumerate([*text.splitlines(), ""], start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
        if not in_fence and line.lstrip().startswith("|"):
            if not current:
                start = number
            current.append(line)
            continue
        if current:
            blocks.append((start, current))
            current = []
    for start, rows in blocks:
        header = _cells(rows[0])
        if len(rows) < 2 or not all(_SEPARATOR_CELL.fullmatch(c) for c in _cells(rows[1])):
            problems.append(
                f"line {start}: table rows without a header and separator row (a blank line "
                "or other text split a table?)"
            )
            continue
        if len(_cells(rows[1])) != len(header):
            problems.append(f"line {start + 1}: separator has a different number of columns")
        for offset, row in enumerate(rows[2:], start=2):
            if len(_cells(row)) != len(header):
                problems.append(
                    f"line {start + offset}: {len(_cells(row))} cells, the header has "
                    f"{len(header)} (escape a literal pipe as \\|)"
                )
    return problems


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_renders_whole(path: Path) -> None:
    problems = table_problems(path.read_text(encoding="utf-8"))
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_checker_sees_a_table_split_by_a_blank_line() -> None:
    whole = "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n"
    assert table_problems(whole) == []
    split = "| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n"
    assert table_problems(split) == [
        "line 5: table rows without a header and separator row (a blank line or other text "
        "split a table?)"
    ]
    ragged = "| a | b |\n|---|---|\n| 1 | 2 | 3 |\n| `x \\| y` | 4 |\n"
    assert table_problems(ragged) == [
        "line 3: 3 cells, the header has 2 (escape a literal pipe as \\|)"
    ]
    fenced = "```\n| not | a table |\n```\n"
    assert table_problems(fenced) == []
