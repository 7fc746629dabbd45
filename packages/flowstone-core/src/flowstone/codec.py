"""The value codec: lossless JSON for asset values, shared by every IO manager.

Plain JSON values (``dict`` with ``str`` keys, ``list``, ``str``, ``int``, finite ``float``,
``bool``, ``None``) encode as themselves, so a stored value is ordinary JSON that other tools
can read. Everything else FlowStone supports is written as a *tagged object*
``{"$fs": <tag>, "v": <payload>}`` and comes back with its exact type and value:

==================  ====================================================================
type                representation
==================  ====================================================================
``float`` nan/inf   ``{"$fs": "float", "v": "nan" | "inf" | "-inf"}`` (strict JSON has
                    no NaN/Infinity, so they are tagged rather than rejected)
``datetime``        ISO 8601 with microseconds and UTC offset; a ``zoneinfo.ZoneInfo``
                    zone is kept by name (``"tz"``) together with ``fold``; any other
                    ``tzinfo`` comes back as the equivalent fixed-offset ``timezone``
``date``/``time``   ISO 8601 (``time`` keeps its offset / zone name and ``fold``)
``timedelta``       ``[days, seconds, microseconds]``
``Decimal``         ``str(value)`` (keeps precision, sign of zero, NaN and Infinity)
``UUID``            the canonical string
``bytes``           base64; ``bytearray`` likewise, under its own tag
``tuple``           list of encoded items
``set``             list of encoded items, sorted by their encoding (deterministic bytes)
``frozenset``       likewise, under its own tag
``dict``            ``[[key, value], ...]`` pairs when a key is not a ``str`` (int,
                    tuple, date...) or when a user dict happens to contain the key
                    ``"$fs"``, so user data can never be mistaken for a tag
``int``             plain, except integers too large for a JSON number literal
                    (more than ~4000 digits), which are tagged as hex
==================  ====================================================================

Types are matched exactly: subclasses (``IntEnum``, ``OrderedDict``, ``defaultdict``,
``NamedTuple``, pandas ``Timestamp``...) would silently come back as their base type, so they
are rejected with a hint on how to convert them. Anything else (functions, arbitrary objects,
generators, locks, data frames, Arrow tables...) and cyclic containers raise
:class:`~flowstone.errors.EncodingError` naming the asset, the offending type and where it
sits in the value, e.g. ``value['rows'][3]['callback']`` (``<dict key[1]>`` and
``<set element>`` mark positions that cannot be indexed).

For plugin authors, the seam is a handful of functions, not a registry:

* :func:`encode_for_storage` / :func:`decode_from_storage` -- what an IO manager calls: raw
  ``bytes`` pass through as format ``"bin"``, everything else goes through the JSON codec
  (``"json"``), and only with ``allow_pickle=True`` are values JSON cannot represent
  pickled (``"pickle"``). Store :attr:`EncodedValue.format` next to the data (a file
  extension, an object-storage content type, a database column) and hand it back on load.
* :func:`encode_value` / :func:`decode_value` -- the JSON codec itself, to and from bytes.
* :func:`to_jsonable` / :func:`from_jsonable` -- the same codec to and from a JSON-able
  Python tree, for stores with a native JSON type (e.g. a Postgres ``jsonb`` column).

Example:
    >>> from datetime import date
    >>> data = encode_value({"day": date(2024, 1, 31), (1, 2): {3}}, asset="orders")
    >>> decode_value(data) == {"day": date(2024, 1, 31), (1, 2): {3}}
    True
"""

from __future__ import annotations

import base64
import json
import math
import pickle
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, is_dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from flowstone.errors import EncodingError, StorageError
from flowstone.parallel import BranchFailed, BranchSkipped

__all__ = [
    "TAG_KEY",
    "Codec",
    "EncodedValue",
    "JsonCodec",
    "StorageFormat",
    "decode_from_storage",
    "decode_value",
    "encode_for_storage",
    "encode_value",
    "from_jsonable",
    "to_jsonable",
]

TAG_KEY = "$fs"
"""The key that marks a tagged object in the JSON representation."""

StorageFormat = Literal["bin", "json", "pickle"]
"""How a stored value is represented: raw bytes, the JSON codec, or (opt-in) pickle."""

# Python refuses to print ints with more than 4300 digits; stay well below that limit.
_MAX_PLAIN_INT_BITS = 13_000
_FIX_HINT = (
    "Return JSON-able data instead (dict, list, str, int, float, bool, None, date, datetime, "
    "time, timedelta, Decimal, UUID, bytes, tuple, set), or opt in to pickle on the IO "
    "manager (e.g. FilesystemIOManager(allow_pickle=True))."
)


@runtime_checkable
class Codec(Protocol):
    """Turns asset values into bytes and back. :class:`JsonCodec` is the default."""

    def encode(self, value: object, *, asset: str) -> bytes:
        """Encode ``value``; raise :class:`~flowstone.errors.EncodingError` naming ``asset``."""
        ...

    def decode(self, data: bytes) -> object:
        """Decode bytes produced by :meth:`encode`."""
        ...


@dataclass(frozen=True, slots=True)
class JsonCodec:
    """The lossless JSON codec as a :class:`Codec` object (see the module docstring)."""

    def encode(self, value: object, *, asset: str) -> bytes:
        """Same as :func:`encode_value`."""
        return encode_value(value, asset=asset)

    def decode(self, data: bytes) -> object:
        """Same as :func:`decode_value`."""
        return decode_value(data)


@dataclass(frozen=True, slots=True)
class EncodedValue:
    """An encoded value and the format needed to decode it again."""

    format: StorageFormat
    data: bytes


class _Unencodable(Exception):
    """Raised deep in the walk; each container on the way up adds its path segment."""

    def __init__(self, obj: object, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.obj = obj
        self.reason = reason
        self.hint = hint if hint is not None else _hint(obj)
        self.segments: list[str] = []


def encode_value(value: object, *, asset: str) -> bytes:
    """Encode ``value`` as UTF-8 JSON with the lossless tagging scheme.

    Args:
        value: the asset value.
        asset: the asset's name, used in error messages.

    Returns:
        The JSON document as bytes (UTF-8; ASCII-escaped if the value holds lone surrogates).

    Raises:
        EncodingError: the value (or something nested in it) has an unsupported type, or a
            container refers to itself. The message names the asset, the type, the path
            inside the value and how to fix it.
    """
    if value is None:  # the common trivial results (a scatter item's), without the walk
        return b"null"
    if type(value) is bool:
        return b"true" if value else b"false"
    tree = to_jsonable(value, asset=asset)
    try:
        return _dumps(tree, ascii_only=False).encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8; \u escapes keep them losslessly in valid JSON.
        return _dumps(tree, ascii_only=True).encode("ascii")


def decode_value(data: bytes) -> object:
    """Decode bytes produced by :func:`encode_value`.

    Raises:
        StorageError: ``data`` is not valid JSON or holds an unknown tag.
    """
    try:
        tree = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise StorageError(
            f"stored value is not valid FlowStone JSON ({exc}). The data was corrupted or "
            "written by something other than the FlowStone codec."
        ) from exc
    return from_jsonable(tree)


def to_jsonable(value: object, *, asset: str) -> Any:
    """Encode ``value`` to a tree of plain JSON types (dict/list/str/int/float/bool/None).

    Use this instead of :func:`encode_value` when the store has a native JSON type.

    Raises:
        EncodingError: as for :func:`encode_value`.
    """
    try:
        return _Encoder().encode(value)
    except _Unencodable as exc:
        where = "value" + "".join(reversed(exc.segments))
        raise EncodingError(
            f"cannot store the value of asset {asset!r}: {where} is "
            f"{_describe(exc.obj)}, which {exc.reason}. {exc.hint}"
        ) from None
    except RecursionError:
        raise EncodingError(
            f"cannot store the value of asset {asset!r}: it is nested too deeply to encode. "
            "Flatten the data structure."
        ) from None


def from_jsonable(tree: Any) -> object:
    """Rebuild the original value from a tree produced by :func:`to_jsonable`.

    Raises:
        StorageError: the tree holds a malformed or unknown tagged object.
    """
    try:
        return _decode(tree)
    except StorageError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, RecursionError) as exc:
        raise StorageError(
            f"stored value holds a malformed tagged object ({type(exc).__name__}: {exc}). "
            "The data was corrupted or written by an incompatible version of FlowStone."
        ) from exc


def encode_for_storage(value: object, *, asset: str, allow_pickle: bool = False) -> EncodedValue:
    """Pick the representation an IO manager stores for ``value``.

    ``bytes`` pass through untouched as ``"bin"``; everything else goes through the JSON
    codec as ``"json"``. Only when ``allow_pickle`` is true and the JSON codec rejects the
    value is it pickled (``"pickle"``).

    Raises:
        EncodingError: the value cannot be encoded (names asset, type and path).
    """
    if type(value) is bytes:
        return EncodedValue("bin", value)
    try:
        return EncodedValue("json", encode_value(value, asset=asset))
    except EncodingError as json_error:
        if not allow_pickle:
            raise
        try:
            return EncodedValue("pickle", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as exc:
            raise EncodingError(
                f"{json_error} Pickle was allowed but failed too: {type(exc).__name__}: {exc}"
            ) from exc


def decode_from_storage(
    encoded: EncodedValue, *, allow_pickle: bool = False, location: str = ""
) -> object:
    """Decode what :func:`encode_for_storage` produced.

    Args:
        encoded: the stored format and bytes.
        allow_pickle: whether this IO manager opted in to pickle. Unpickling runs arbitrary
            code, so without the opt-in a ``"pickle"`` value is refused.
        location: where the value came from, for error messages.

    Raises:
        StorageError: pickle data without the opt-in, or corrupt data.
    """
    where = f" at {location!r}" if location else ""
    if encoded.format == "bin":
        return encoded.data
    if encoded.format == "json":
        return decode_value(encoded.data)
    if encoded.format == "pickle":
        if not allow_pickle:
            raise StorageError(
                f"the value{where} is pickled, and this IO manager does not allow pickle. "
                "Unpickling data can run arbitrary code; if you trust where it came from, "
                "configure the IO manager with allow_pickle=True."
            )
        try:
            return pickle.loads(encoded.data)  # noqa: S301 -- explicit per-manager opt-in
        except Exception as exc:
            raise StorageError(f"cannot unpickle the value{where}: {exc}") from exc
    raise StorageError(f"unknown storage format {encoded.format!r}{where}")


class _Encoder:
    """One encoding walk; remembers the containers on the current path to detect cycles."""

    __slots__ = ("_active",)

    def __init__(self) -> None:
        self._active: set[int] = set()

    def encode(self, v: object) -> Any:
        t = type(v)
        if t is str or t is bool or v is None:
            return v
        if t is int:
            if v.bit_length() > _MAX_PLAIN_INT_BITS:  # type: ignore[attr-defined]
                return _tag("int", format(v, "x"))
            return v
        if t is float:
            if math.isfinite(v):  # type: ignore[arg-type]
                return v
            return _tag("float", "nan" if v != v else ("inf" if v > 0 else "-inf"))  # type: ignore[operator]
        if t is list or t is tuple or t is dict or t is set or t is frozenset:
            return self._container(v)
        scalar = _SCALARS.get(t)
        if scalar is not None:
            return scalar(v)
        raise _Unencodable(v, _reason(v))

    def _container(self, v: Any) -> Any:
        key = id(v)
        if key in self._active:
            raise _Unencodable(
                v,
                "contains itself (a reference cycle)",
                "Break the cycle: store a copy without the self-reference.",
            )
        self._active.add(key)
        try:
            if type(v) is dict:
                return self._dict(v)
            if type(v) is list or type(v) is tuple:
                items = self._sequence(v)
                return items if type(v) is list else _tag("tuple", items)
            members = []
            for item in v:
                try:
                    members.append(self.encode(item))
                except _Unencodable as exc:
                    exc.segments = [f"<set element{''.join(reversed(exc.segments))}>"]
                    raise
            members.sort(key=_sort_key)
            return _tag(type(v).__name__, members)
        finally:
            self._active.discard(key)

    def _sequence(self, v: list[Any] | tuple[Any, ...]) -> list[Any]:
        items = []
        for i, item in enumerate(v):
            try:
                items.append(self.encode(item))
            except _Unencodable as exc:
                exc.segments.append(f"[{i}]")
                raise
        return items

    def _dict(self, v: dict[Any, Any]) -> Any:
        if all(type(k) is str for k in v) and TAG_KEY not in v:
            out: dict[str, Any] = {}
            for k, item in v.items():
                try:
                    out[k] = self.encode(item)
                except _Unencodable as exc:
                    exc.segments.append(f"[{k!r}]")
                    raise
            return out
        pairs = []
        for k, item in v.items():
            try:
                ek = self.encode(k)
            except _Unencodable as exc:
                exc.segments = [f"<dict key{''.join(reversed(exc.segments))}>"]
                raise
            try:
                pairs.append([ek, self.encode(item)])
            except _Unencodable as exc:
                exc.segments.append(f"[{_short_repr(k)}]")
                raise
        return _tag("dict", pairs)


def _tag(tag: str, payload: Any, **extra: Any) -> dict[str, Any]:
    return {TAG_KEY: tag, "v": payload, **extra}


def _dumps(tree: Any, *, ascii_only: bool) -> str:
    return json.dumps(tree, ensure_ascii=ascii_only, allow_nan=False, separators=(",", ":"))


def _sort_key(encoded: Any) -> str:
    return json.dumps(encoded, sort_keys=True, ensure_ascii=True)


def _zone_extra(tz: object, fold: int) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if isinstance(tz, ZoneInfo) and tz.key is not None:
        extra["tz"] = tz.key
    if fold:
        extra["fold"] = fold
    return extra


def _enc_datetime(v: datetime) -> Any:
    return _tag("datetime", v.isoformat(), **_zone_extra(v.tzinfo, v.fold))


def _enc_time(v: time) -> Any:
    extra = _zone_extra(v.tzinfo, v.fold)
    # A ZoneInfo time has no utcoffset() (no date to resolve it), so the name carries it.
    iso = v.replace(tzinfo=None).isoformat() if "tz" in extra else v.isoformat()
    return _tag("time", iso, **extra)


# Read-only: exact type -> encoder for the tagged scalar types.
_SCALARS: Mapping[type, Callable[[Any], Any]] = MappingProxyType(
    {
        datetime: _enc_datetime,
        date: lambda v: _tag("date", v.isoformat()),
        time: _enc_time,
        timedelta: lambda v: _tag("timedelta", [v.days, v.seconds, v.microseconds]),
        Decimal: lambda v: _tag("decimal", str(v)),
        uuid.UUID: lambda v: _tag("uuid", str(v)),
        bytes: lambda v: _tag("bytes", base64.b64encode(v).decode("ascii")),
        bytearray: lambda v: _tag("bytearray", base64.b64encode(v).decode("ascii")),
        # a parallel join may return its branch markers as they are
        BranchFailed: lambda v: _tag("branch_failed", [v.branch, v.error]),
        BranchSkipped: lambda v: _tag("branch_skipped", [v.branch, v.reason]),
    }
)


def _decode(node: Any) -> Any:
    t = type(node)
    if t is list:
        return [_decode(item) for item in node]
    if t is not dict:
        return node
    if TAG_KEY not in node:
        return {k: _decode(item) for k, item in node.items()}
    tag, payload = node[TAG_KEY], node["v"]
    if tag == "dict":
        return {_decode(k): _decode(item) for k, item in payload}
    if tag == "tuple":
        return tuple(_decode(item) for item in payload)
    if tag == "set":
        return {_decode(item) for item in payload}
    if tag == "frozenset":
        return frozenset(_decode(item) for item in payload)
    if tag == "datetime":
        dt = datetime.fromisoformat(payload)
        if "tz" in node:
            dt = dt.replace(tzinfo=_zone(node["tz"]))
        return dt.replace(fold=node.get("fold", 0))
    if tag == "time":
        tm = time.fromisoformat(payload)
        if "tz" in node:
            tm = tm.replace(tzinfo=_zone(node["tz"]))
        return tm.replace(fold=node.get("fold", 0))
    if tag == "date":
        return date.fromisoformat(payload)
    if tag == "timedelta":
        days, seconds, micros = payload
        return timedelta(days=days, seconds=seconds, microseconds=micros)
    if tag == "decimal":
        return Decimal(payload)
    if tag == "uuid":
        return uuid.UUID(payload)
    if tag == "bytes":
        return base64.b64decode(payload, validate=True)
    if tag == "bytearray":
        return bytearray(base64.b64decode(payload, validate=True))
    if tag == "branch_failed":
        return BranchFailed(*payload)
    if tag == "branch_skipped":
        return BranchSkipped(*payload)
    if tag == "float":
        return float(payload)
    if tag == "int":
        return int(payload, 16)
    raise StorageError(
        f"stored value holds an unknown tag {tag!r}. It was probably written by a newer "
        "version of FlowStone; upgrade flowstone-core to read it."
    )


def _zone(key: str) -> ZoneInfo:
    try:
        return ZoneInfo(key)
    except Exception as exc:
        raise StorageError(
            f"stored value uses time zone {key!r}, which is not available here ({exc}). "
            "Install the tzdata package or the system time zone database."
        ) from exc


def _describe(obj: object) -> str:
    t = type(obj)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return f"of type {name}"


def _reason(obj: object) -> str:
    bases = (dict, list, tuple, set, frozenset, str, int, float, bytes, datetime, date, Decimal)
    for base in bases:
        if isinstance(obj, base):
            return f"is a subclass of {base.__name__} and would not round-trip as itself"
    return "the FlowStone codec cannot represent"


def _hint(obj: object) -> str:
    if isinstance(obj, Enum):
        return f"Store its .value instead. {_FIX_HINT}"
    if is_dataclass(obj):
        return f"Convert it with dataclasses.asdict(). {_FIX_HINT}"
    for base in (dict, list, tuple, set, frozenset, str, int, float):
        if isinstance(obj, base):
            name = base.__name__
            return f"Convert it to a plain {name}, e.g. {name}(value). {_FIX_HINT}"
    return _FIX_HINT


def _short_repr(key: object, limit: int = 60) -> str:
    text = repr(key)
    return text if len(text) <= limit else text[: limit - 3] + "..."
