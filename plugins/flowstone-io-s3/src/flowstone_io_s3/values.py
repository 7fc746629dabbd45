"""How an asset value becomes the bytes of one object, and back.

========================  ==================  ===========================================
value                     location extension  stored as
========================  ==================  ===========================================
``bytes``                 ``.bin``            the bytes unchanged
``pyarrow.Table``         ``.arrow.parquet``  Parquet
``pandas.DataFrame``      ``.pandas.parquet`` Parquet (pandas index and dtypes kept)
``list`` of ``dict``      ``.rows.parquet``   Parquet, when the asset's format is "parquet"
anything else             ``.json``           the core's lossless JSON codec
========================  ==================  ===========================================

Nothing is ever pickled. The extension in the location says how to decode, so loading needs
no extra request.
"""

from __future__ import annotations

import io
from typing import Any, Literal

from flowstone.codec import decode_value, encode_value
from flowstone.errors import EncodingError, StorageError, UsageError

__all__ = ["ValueFormat", "check_format", "decode", "encode"]

ValueFormat = Literal["auto", "json", "bin", "parquet"]
"""Per-asset choice: ``auto`` picks by value type (see the module docstring)."""

_FORMATS = ("auto", "json", "bin", "parquet")


def check_format(value: object, where: str) -> ValueFormat:
    """Validate a configured format name.

    Raises:
        UsageError: not one of ``auto``, ``json``, ``bin``, ``parquet``.
    """
    if value not in _FORMATS:
        raise UsageError(f"{where}: unknown format {value!r}. Fix: use one of {list(_FORMATS)}.")
    return value  # type: ignore[return-value]


def encode(value: object, *, asset: str, fmt: ValueFormat, compression: str) -> tuple[str, bytes]:
    """Return ``(extension, data)`` for ``value``.

    Raises:
        EncodingError: the value cannot be stored in the chosen format (names the asset).
    """
    if fmt == "bin" or (fmt == "auto" and type(value) is bytes):
        if type(value) is not bytes:
            raise EncodingError(
                f"cannot store the value of asset {asset!r} as raw bytes: it is "
                f"{type(value).__name__}. Return bytes, or configure another format for it."
            )
        return "bin", value
    kind = _tabular_kind(value)
    if fmt == "parquet" or (fmt == "auto" and kind in ("arrow", "pandas")):
        if kind is None and _is_rows(value):
            kind = "rows"
        if kind is None:
            raise EncodingError(
                f"cannot store the value of asset {asset!r} as Parquet: it is "
                f"{type(value).__name__}. Return a pyarrow.Table, a pandas.DataFrame or a "
                "list of dicts with the same keys, or configure format 'json' for the asset."
            )
        return f"{kind}.parquet", _to_parquet(value, kind, asset, compression)
    return "json", encode_value(value, asset=asset)


def decode(extension: str, data: bytes, *, location: str) -> object:
    """Decode what :func:`encode` produced.

    Raises:
        StorageError: corrupt data, naming ``location``.
    """
    if extension == "bin":
        return data
    if extension == "json":
        try:
            return decode_value(data)
        except StorageError as exc:
            raise StorageError(f"{location}: {exc}") from exc
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise StorageError(
            f"{location} is not readable Parquet ({exc}). The object was corrupted or "
            "replaced by something else; re-materialize the asset."
        ) from exc
    kind = extension.split(".", 1)[0]
    if kind == "rows":
        return table.to_pylist()
    if kind == "pandas":
        return table.to_pandas()
    return table


def _tabular_kind(value: object) -> str | None:
    module = type(value).__module__
    if module.startswith("pyarrow") and type(value).__name__ == "Table":
        return "arrow"
    if module.startswith("pandas") and type(value).__name__ == "DataFrame":
        return "pandas"
    return None


def _is_rows(value: object) -> bool:
    if type(value) is not list or not all(type(row) is dict for row in value):
        return False
    if not value:
        return True
    first = list(value[0])
    # Parquet gives every row every column: rows with other keys would come back changed.
    return all(isinstance(k, str) for k in first) and all(list(row) == first for row in value)


def _to_parquet(value: Any, kind: str, asset: str, compression: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if kind == "rows":
            table = pa.Table.from_pylist(value)
        elif kind == "pandas":
            table = pa.Table.from_pandas(value)
        else:
            table = value
        sink = io.BytesIO()
        pq.write_table(table, sink, compression=compression)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise EncodingError(
            f"cannot store the value of asset {asset!r} as Parquet: {type(exc).__name__}: "
            f"{exc}. Make every column hold one type, or configure format 'json' for it."
        ) from exc
    return sink.getvalue()
