"""Just enough of PEP 440 to check a plugin's declared ``flowstone-core`` range.

The core has no dependencies, so ``packaging`` is not available: this reads release
numbers (``0.1``, ``0.1.0``, ``1.2.3rc1`` as ``1.2.3``) and the comparison operators
distributions use for ranges (``>=``, ``>``, ``<=``, ``<``, ``==`` with ``.*``, ``!=``,
``~=``). Anything it cannot read counts as compatible: the check exists to give a clear
error for a plugin built for another core, never to block one it does not understand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["declared_requirement", "satisfies"]

_RELEASE = re.compile(r"\s*v?(\d+(?:\.\d+)*)")
_CLAUSE = re.compile(r"\s*(~=|===|==|!=|<=|>=|<|>)\s*([^\s,;]+)\s*")
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirement(requires: Iterable[str] | None, name: str) -> str | None:
    """The version specifier a distribution's ``Requires-Dist`` lines give ``name``.

    Returns ``""`` for a bare requirement, None when ``name`` is not required (or only
    under an environment marker, such as an extra).
    """
    wanted = _normalise(name)
    for line in requires or ():
        requirement, _, marker = line.partition(";")
        match = _NAME.fullmatch(requirement)
        if match is None or _normalise(match.group(1)) != wanted or marker.strip():
            continue
        return match.group(2).strip().strip("()").strip()
    return None


def _release(text: str) -> tuple[int, ...] | None:
    match = _RELEASE.match(text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def _compare(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    width = max(len(a), len(b))
    a, b = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
    return (a > b) - (a < b)


def satisfies(version: str, specifier: str) -> bool:
    """Whether release ``version`` is inside every clause of ``specifier``."""
    have = _release(version)
    if have is None or not specifier.strip():
        return True
    for clause in specifier.split(","):
        if not clause.strip():
            continue
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            return True  # not something this reader understands: do not block
        op, text = match.groups()
        if op == "===":
            if version.strip() != text:
                return False
            continue
        wildcard = text.endswith(".*")
        want = _release(text.removesuffix(".*"))
        if want is None:
            return True
        if not _holds(op, have, want, wildcard):
            return False
    return True


def _holds(op: str, have: tuple[int, ...], want: tuple[int, ...], wildcard: bool) -> bool:
    if op in ("==", "!=") and wildcard:
        same = have[: len(want)] + (0,) * max(0, len(want) - len(have)) == want
        return same if op == "==" else not same
    order = _compare(have, want)
    if op == "~=":  # >= want, and the same release up to the last but one number
        prefix = want[:-1] if len(want) > 1 else want
        padded = have + (0,) * max(0, len(prefix) - len(have))
        return order >= 0 and padded[: len(prefix)] == prefix
    return {
        "==": order == 0,
        "!=": order != 0,
        "<": order < 0,
        "<=": order <= 0,
        ">": order > 0,
        ">=": order >= 0,
    }[op]
