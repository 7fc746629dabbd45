"""The partition key codec: one canonical, unambiguous, round-tripping text form.

The grammar (``docs/partitions.md`` is the user-facing description)::

    encoded  := ""                      the absence of a partition (None)
              | value
    value    := int | date | datetime | bare | quoted | tuple
    int      := -?(0|[1-9][0-9]*)       42, -7
    date     := YYYY-MM-DD              2024-01-05
    datetime := YYYY-MM-DDTHH:MM:SS[.ffffff][Z]
                                        Z marks an aware datetime (normalised to UTC);
                                        without Z the datetime is naive
    bare     := a str written as itself: non-empty, no reserved or invisible
                character, and not starting with a digit, "+", "-" or "."
    quoted   := "'" chars "'"           every other str; \\ \\' \\n \\r \\t \\xHH \\uHHHH escapes
    tuple    := "(" value ("," value)* ")"

Which characters are escaped or allowed bare is decided by fixed tables, never by the
Unicode database of the running Python, so every Python version encodes a key the same
way (encoded keys are stored, and looked up again by other processes).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import TypeAlias

from flowstone.errors import PartitionError

__all__ = [
    "MAX_PARTITION_DEPTH",
    "MAX_PARTITION_LENGTH",
    "PartitionKey",
    "check_key",
    "decode_partition",
    "encode_partition",
]

PartitionKey: TypeAlias = str | int | date | datetime | tuple["PartitionKey", ...]
"""A partition key: ``str``, ``int``, ``date``, ``datetime`` or a non-empty tuple of them."""

MAX_PARTITION_LENGTH = 512
"""The longest encoded partition key, in characters."""

MAX_PARTITION_DEPTH = 8
"""How deeply tuples may nest inside a partition key (a flat tuple has depth 1)."""

_ALLOWED = "str, int, datetime.date, datetime.datetime, or a non-empty tuple of those"

# Characters written as escapes inside quotes: controls (C0, DEL, C1), lone surrogates
# (they cannot be stored as UTF-8) and the Unicode line separators (they break log lines).
_ESCAPED = re.compile("[\\\\'\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
_SHORT_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {"\\": "\\", "'": "'", "n": "\n", "r": "\r", "t": "\t"}
# Characters that force quoting: the syntax characters, whitespace, and invisible or
# look-alike code points that would make a bare key misleading in a log line.
_NOT_BARE = re.compile(
    "[\x00-\x20\"'(),\\\\\x7f-\xa0\xad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180e"
    "\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0"
    "\ufff0-\uffff\ud800-\udfff\U000e0000-\U000e0fff]"
)
_SCALAR_START = frozenset("0123456789+-.")
_INT = re.compile(r"-?[0-9]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?Z?")
# ~512 decimal digits; str() of a bigger int may even hit Python's int-to-str limit.
_MAX_INT_BITS = 1701


def check_key(key: object, *, depth: int = 0) -> PartitionKey:
    """Return ``key`` as a plain partition key (subclasses converted), or raise.

    Aware datetimes are converted to UTC, so equal instants give equal keys.

    Raises:
        PartitionError: ``key`` (or an element of it) has a type a key may not have, is
            an empty tuple, or nests tuples deeper than ``MAX_PARTITION_DEPTH``.
    """
    if isinstance(key, bool):
        raise PartitionError(
            f"a partition key cannot be a bool ({key!r}); allowed types are {_ALLOWED}. "
            "Use a str such as 'yes'/'no' or an int 1/0 instead."
        )
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int):
        return int(key)
    if isinstance(key, datetime):
        # Rebuilt field by field so subclasses (with extra precision or state) become
        # plain datetimes; fold matters for the UTC instant of an ambiguous local time.
        plain = datetime(
            key.year, key.month, key.day, key.hour, key.minute, key.second, key.microsecond
        )
        if key.utcoffset() is None:
            return plain
        try:
            return plain.replace(tzinfo=key.tzinfo, fold=key.fold).astimezone(UTC)
        except OverflowError as exc:
            raise PartitionError(
                f"partition key {key!r} cannot be converted to UTC (out of range); "
                "use a datetime between years 1 and 9999 in UTC."
            ) from exc
    if isinstance(key, date):
        return date(key.year, key.month, key.day)
    if isinstance(key, tuple):
        if not key:
            raise PartitionError(
                "a partition key cannot be an empty tuple; use None for 'not partitioned' "
                "or give the tuple at least one element."
            )
        if depth + 1 > MAX_PARTITION_DEPTH:
            raise PartitionError(
                f"partition key tuples nest deeper than {MAX_PARTITION_DEPTH} levels; "
                "flatten the key into one tuple."
            )
        return tuple(check_key(part, depth=depth + 1) for part in key)
    where = " inside a tuple" if depth else ""
    fix = " (None means 'not partitioned' and is only allowed as the whole key)"
    raise PartitionError(
        f"a partition key cannot be a {type(key).__qualname__}{where} ({key!r}); "
        f"allowed types are {_ALLOWED}" + (fix if key is None else "") + "."
    )


def encode_partition(key: PartitionKey | None) -> str:
    """Encode a partition key to its canonical text form.

    ``None`` (not partitioned) encodes to ``""``; no key encodes to ``""``. Equal keys
    encode to equal text, different keys to different text, and
    ``decode_partition(encode_partition(k)) == k``.

    Args:
        key: the key, or ``None`` for "not partitioned".

    Returns:
        The encoded key, at most ``MAX_PARTITION_LENGTH`` characters.

    Raises:
        PartitionError: the key has a type a key may not have, or encodes too long.

    Example:
        >>> encode_partition(("us-east", date(2024, 1, 5)))
        '(us-east,2024-01-05)'
    """
    if key is None:
        return ""
    text = _encode(check_key(key))
    if len(text) > MAX_PARTITION_LENGTH:
        raise _too_long(len(text))
    return text


def _too_long(length: int, about: str = "") -> PartitionError:
    return PartitionError(
        f"partition key is too long: it encodes to {about}{length} characters and the "
        f"limit is {MAX_PARTITION_LENGTH} (MAX_PARTITION_LENGTH). Shorten the key, or use "
        "a hash of the long part as the key (e.g. hashlib.sha256(text.encode()).hexdigest())."
    )


def _encode(key: PartitionKey) -> str:
    if isinstance(key, str):
        if key and key[0] not in _SCALAR_START and not _NOT_BARE.search(key):
            return key
        return "'" + _ESCAPED.sub(_escape, key) + "'"
    if isinstance(key, int):
        if key.bit_length() > _MAX_INT_BITS:
            raise _too_long(int(key.bit_length() * 0.30103), about="about ")
        return str(key)
    if isinstance(key, datetime):
        if key.tzinfo is None:
            return key.isoformat()
        return key.replace(tzinfo=None).isoformat() + "Z"
    if isinstance(key, date):
        return key.isoformat()
    return "(" + ",".join(_encode(part) for part in key) + ")"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def decode_partition(text: str) -> PartitionKey | None:
    """Decode text made by :func:`encode_partition` back to the typed key.

    Args:
        text: an encoded key; ``""`` decodes to ``None`` (not partitioned).

    Returns:
        The key, with its original type (a ``date`` comes back as a ``date``).

    Raises:
        PartitionError: ``text`` is not the canonical encoding of any key.

    Example:
        >>> decode_partition("(us-east,2024-01-05)")
        ('us-east', datetime.date(2024, 1, 5))
    """
    if not isinstance(text, str):
        raise PartitionError(
            f"an encoded partition must be a str, got {type(text).__qualname__}; "
            "pass the text made by encode_partition()."
        )
    if text == "":
        return None
    if len(text) > MAX_PARTITION_LENGTH:
        raise _too_long(len(text))
    key, end = _Parser(text).value(0, 0)
    if end != len(text):
        raise _malformed(text, f"unexpected {text[end]!r} at position {end}")
    canonical = _encode(key)
    if canonical != text:
        raise _malformed(text, f"it is not in canonical form, which is {canonical!r}")
    return key


def _malformed(text: str, why: str) -> PartitionError:
    return PartitionError(
        f"{text!r} is not a valid encoded partition key: {why}. Encoded keys must be made "
        "by flowstone.encode_partition(); to turn CLI text into a key use parse_partition()."
    )


class _Parser:
    """Recursive-descent parser over one encoded key; positions index into ``text``."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def value(self, pos: int, depth: int) -> tuple[PartitionKey, int]:
        text = self.text
        if pos >= len(text):
            raise _malformed(text, "it ends where a value was expected")
        first = text[pos]
        if first == "(":
            return self.sequence(pos + 1, depth + 1)
        if first == "'":
            return self.quoted(pos + 1)
        end = pos
        while end < len(text) and text[end] not in ",)":
            end += 1
        token = text[pos:end]
        if not token:
            raise _malformed(text, f"a value is missing at position {pos}")
        if first in _SCALAR_START:
            return self.scalar(token), end
        return token, end

    def sequence(self, pos: int, depth: int) -> tuple[PartitionKey, int]:
        if depth > MAX_PARTITION_DEPTH:
            raise _malformed(self.text, f"tuples nest deeper than {MAX_PARTITION_DEPTH} levels")
        parts: list[PartitionKey] = []
        while True:
            part, pos = self.value(pos, depth)
            parts.append(part)
            if pos >= len(self.text):
                raise _malformed(self.text, "a tuple is not closed with ')'")
            if self.text[pos] == ")":
                return tuple(parts), pos + 1
            if self.text[pos] != ",":
                raise _malformed(self.text, f"expected ',' or ')' at position {pos}")
            pos += 1

    def quoted(self, pos: int) -> tuple[PartitionKey, int]:
        text = self.text
        chars: list[str] = []
        while pos < len(text):
            char = text[pos]
            if char == "'":
                return "".join(chars), pos + 1
            if char != "\\":
                chars.append(char)
                pos += 1
                continue
            kind = text[pos + 1 : pos + 2]
            if kind in _UNESCAPES:
                chars.append(_UNESCAPES[kind])
                pos += 2
                continue
            width = {"x": 2, "u": 4}.get(kind)
            digits = text[pos + 2 : pos + 2 + width] if width else ""
            if not width or not re.fullmatch(f"[0-9a-f]{{{width}}}", digits):
                raise _malformed(text, f"bad escape at position {pos}")
            chars.append(chr(int(digits, 16)))
            pos += 2 + width
        raise _malformed(text, 'a quoted string is not closed with "\'"')

    def scalar(self, token: str) -> PartitionKey:
        try:
            if _INT.fullmatch(token):
                return int(token)
            if _DATE.fullmatch(token):
                return date.fromisoformat(token)
            if _DATETIME.fullmatch(token):
                if token.endswith("Z"):
                    return datetime.fromisoformat(token[:-1]).replace(tzinfo=UTC)
                return datetime.fromisoformat(token)
        except ValueError as exc:
            raise _malformed(self.text, f"{token!r} is not a real date or time") from exc
        raise _malformed(
            self.text, f"{token!r} is neither an int, a date nor a datetime (quote a str)"
        )
