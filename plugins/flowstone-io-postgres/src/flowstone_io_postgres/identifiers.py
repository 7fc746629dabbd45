"""SQL identifiers taken from configuration: validated strictly, then quoted.

Schema, table and column names cannot be bound parameters, so every one that reaches SQL
text goes through :func:`quote_ident` first. The accepted alphabet is deliberately narrow
(an ASCII letter or underscore, then letters, digits or underscores, at most 63 bytes:
PostgreSQL's ``NAMEDATALEN - 1``) so that a name never needs escaping and an injection
attempt fails loudly instead of being "made safe".
"""

from __future__ import annotations

import re

from flowstone.errors import UsageError

__all__ = ["QualifiedName", "parse_qualified_name", "quote_ident", "validate_ident"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def validate_ident(name: str, *, what: str = "identifier") -> str:
    """Return ``name`` unchanged if it is a safe SQL identifier.

    Args:
        name: the identifier from configuration.
        what: what the name is for, used in the error message (``"schema"``, ``"column"``).

    Raises:
        UsageError: the name is not 1-63 ASCII letters, digits or underscores starting with
            a letter or underscore.
    """
    if not isinstance(name, str) or _IDENT.fullmatch(name) is None:
        raise UsageError(
            f"invalid {what} name {name!r}: use 1-63 ASCII letters, digits or underscores, "
            "starting with a letter or underscore (e.g. 'flowstone' or 'asset_values')."
        )
    return name


def quote_ident(name: str, *, what: str = "identifier") -> str:
    """Validate ``name`` and return it double-quoted for use in SQL text."""
    return '"' + validate_ident(name, what=what) + '"'


class QualifiedName:
    """A validated ``schema.name`` pair with its quoted SQL form."""

    __slots__ = ("name", "schema")

    def __init__(self, schema: str, name: str) -> None:
        self.schema = validate_ident(schema, what="schema")
        self.name = validate_ident(name, what="table")

    @property
    def sql(self) -> str:
        """``"schema"."name"``, ready to paste into SQL text."""
        return f'"{self.schema}"."{self.name}"'

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    def __repr__(self) -> str:
        return f"QualifiedName({self.schema!r}, {self.name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QualifiedName):
            return NotImplemented
        return (self.schema, self.name) == (other.schema, other.name)

    def __hash__(self) -> int:
        return hash((self.schema, self.name))


def parse_qualified_name(text: str, *, default_schema: str = "public") -> QualifiedName:
    """Parse ``"schema.table"`` (or ``"table"``, in ``default_schema``) strictly.

    Raises:
        UsageError: more than one dot, or either part is not a safe identifier.
    """
    if not isinstance(text, str):
        raise UsageError(f"table name must be a string like 'schema.table', got {text!r}")
    parts = text.split(".")
    if len(parts) == 1:
        return QualifiedName(default_schema, parts[0])
    if len(parts) == 2:
        return QualifiedName(parts[0], parts[1])
    raise UsageError(
        f"invalid table name {text!r}: expected 'table' or 'schema.table' "
        "(quoted or dotted names are not accepted)."
    )
