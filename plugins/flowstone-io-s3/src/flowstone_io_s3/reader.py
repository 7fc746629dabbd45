"""S3ItemReader: scatter items from S3 objects, resumable in the middle of an object."""

from __future__ import annotations

import collections.abc as cabc
import csv
from typing import Any, Literal, TypeAlias

from flowstone.errors import StorageError, UsageError
from flowstone_io_s3._csv import CsvParser
from flowstone_io_s3._formats import JsonArrayParser, JsonLinesParser, Parser
from flowstone_io_s3._listing import ObjectSource, Selection, list_objects
from flowstone_io_s3._parquet import ParquetParser
from flowstone_io_s3._ranges import ObjectRef, RangedFile, byte_chunks, head_object
from flowstone_io_s3.connection import Connection

__all__ = ["Format", "S3ItemReader"]

Format = Literal["auto", "jsonl", "json", "csv", "parquet", "objects"]
"""``auto`` picks by key suffix; ``objects`` yields the listed objects themselves."""

Text: TypeAlias = str | cabc.Callable[[cabc.Mapping[str, Any]], str]
"""A key or prefix, or a function of the asset's dependency values returning one."""

_SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip
_MIB = 1024 * 1024


class S3ItemReader:
    """Streams scatter items out of S3 objects, page by page, with exact checkpoints.

    Give exactly one of ``key`` (one object), ``prefix`` (every object under it, in key
    order, optionally filtered by ``suffix``, after ``start_after``, at most
    ``max_objects``) or ``manifest`` (an object listing keys: a JSON array of keys, or one
    key per line). Each may be a callable receiving the asset's dependency values at
    ``init``, e.g. ``key=lambda deps: deps["arrival"]["key"]``.

    Items, by ``format`` (``auto``: from the key suffix, ``.gz`` stripped first):

    * ``jsonl`` -- one JSON value per line (blank lines skipped);
    * ``json`` -- the elements of one top-level JSON array, parsed one at a time;
    * ``csv`` -- rows as dicts, header row or ``fieldnames``, any :mod:`csv` ``dialect``;
      quoted fields may hold newlines; a UTF-8 BOM is dropped at the start of an object only;
    * ``parquet`` -- rows as dicts, one row group in memory at a time;
    * ``objects`` -- the listed objects themselves: ``{"bucket", "key", "size", "etag"}``.

    ``compression``: ``auto`` reads objects whose key ends in ``.gz`` as gzip.

    Objects are read with ranged GETs of ``chunk_size`` bytes (the next one fetched while
    the current one is parsed) and lines are split here, not by botocore; a transfer that
    breaks mid-way resumes from its last byte. Memory stays at about two chunks (a Parquet
    row group for Parquet), whatever the object size.

    The checkpoint names the object (key and ETag) and the position inside it: byte offset
    and line for text formats, row group and row for Parquet. Restoring it on a fresh
    reader continues with the next item, without skipping or repeating one, even in the
    middle of an object. An object that changed since the checkpoint (another ETag) is an
    error rather than a silent skip. In gzip objects the offset counts decompressed bytes;
    resuming decompresses (and drops) what comes before it.

    A record that cannot be parsed raises :class:`~flowstone.errors.StorageError` naming
    the object, the line / item / row group and the byte offset; the good part of the page
    is returned first and the position stays at the last good record.

    Args:
        bucket: the bucket.
        key, prefix, manifest: what to read (exactly one).
        format: see above.
        suffix: with ``prefix``: only keys ending so (e.g. ``".csv"``).
        start_after: with ``prefix``: only keys after this one.
        max_objects: with ``prefix``: at most this many objects.
        compression: ``"auto"``, ``"gzip"`` or ``"none"``.
        dialect, fieldnames, encoding: CSV options, as for :class:`flowstone.readers.Csv`.
        chunk_size: bytes per ranged GET (at least 64 KiB; default 8 MiB).
        endpoint_url, region_name, client, session: as for :class:`~flowstone_io_s3.S3IOManager`.

    Example::

        fs.Scatter(reader=S3ItemReader(bucket="exports", prefix="orders/", suffix=".csv"))
    """

    def __init__(
        self,
        bucket: str,
        *,
        key: Text | None = None,
        prefix: Text | None = None,
        manifest: Text | None = None,
        format: Format = "auto",
        suffix: str = "",
        start_after: str = "",
        max_objects: int | None = None,
        compression: Literal["auto", "gzip", "none"] = "auto",
        dialect: str | csv.Dialect | type[csv.Dialect] = "excel",
        fieldnames: cabc.Sequence[str] | None = None,
        encoding: str = "utf-8",
        chunk_size: int = 8 * _MIB,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        client: Any = None,
        session: Any = None,
    ) -> None:
        self._args = dict(locals())
        del self._args["self"]
        where = "S3ItemReader"
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise UsageError(f"{where}: bucket must be a bucket name, got {bucket!r}.")
        given = [
            n
            for n, v in (("key", key), ("prefix", prefix), ("manifest", manifest))
            if v is not None
        ]
        if len(given) != 1:
            raise UsageError(
                f"{where}: give exactly one of key=, prefix= or manifest= (got {given or 'none'})."
            )
        for name in given:
            value = self._args[name]
            if not callable(value) and not isinstance(value, str):
                raise UsageError(f"{where}: {name} must be a str or a callable, got {value!r}.")
        if format not in ("auto", "jsonl", "json", "csv", "parquet", "objects"):
            raise UsageError(
                f"{where}: unknown format {format!r}. Fix: use 'auto', 'jsonl', 'json', 'csv', "
                "'parquet' or 'objects'."
            )
        if format == "objects" and prefix is None:
            raise UsageError(f"{where}: format='objects' lists a prefix; pass prefix=.")
        if compression not in ("auto", "gzip", "none"):
            raise UsageError(f"{where}: compression must be 'auto', 'gzip' or 'none'.")
        if max_objects is not None and (
            isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1
        ):
            raise UsageError(f"{where}: max_objects must be an int >= 1 or None.")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 65536:
            raise UsageError(f"{where}: chunk_size must be an int of at least 65536 bytes.")
        if isinstance(fieldnames, str):
            raise UsageError(f"{where}: fieldnames must be a sequence of names, not a str.")
        if isinstance(dialect, str):
            try:
                csv.get_dialect(dialect)
            except csv.Error as exc:
                raise UsageError(
                    f"{where}: unknown dialect {dialect!r}. Fix: use one of "
                    f"{sorted(csv.list_dialects())} or a csv.Dialect class."
                ) from exc
        try:
            "\n".encode(encoding)
        except LookupError as exc:
            raise UsageError(f"{where}: unknown encoding {encoding!r}.") from exc
        self._bucket = bucket
        self._format = format
        self._connection = Connection("s3", endpoint_url, region_name, client, session)
        self._selection: Selection | None = None
        self._objects: ObjectSource | None = None
        self._current: ObjectRef | None = None
        self._parser: Parser | None = None
        self._index = 0  # objects finished before the current one

    def __copy__(self) -> S3ItemReader:
        # A fresh, un-initialised reader with the same configuration (of a subclass too).
        return type(self)(**self._args)

    def __repr__(self) -> str:
        what = {
            n: self._args[n] for n in ("key", "prefix", "manifest") if self._args[n] is not None
        }
        return f"S3ItemReader(bucket={self._bucket!r}, {what})"

    # --- the ItemReader protocol -----------------------------------------------------------
    def init(self, deps: cabc.Mapping[str, Any]) -> None:
        """Resolve key/prefix/manifest with ``deps`` and start at the first item."""
        self.close()
        resolved: dict[str, str | None] = {}
        for name in ("key", "prefix", "manifest"):
            value = self._args[name]
            if callable(value):
                value = value(deps)
                if not isinstance(value, str):
                    raise UsageError(
                        f"S3ItemReader: the {name} callable returned {value!r}; return a str."
                    )
            resolved[name] = value
        self._selection = Selection(
            bucket=self._bucket,
            key=resolved["key"],
            prefix=resolved["prefix"],
            manifest=resolved["manifest"],
            suffix=self._args["suffix"],
            start_after=self._args["start_after"],
            max_objects=self._args["max_objects"],
        )
        self._start(self._args["start_after"], 0)

    def read(self, max_items: int) -> list[Any]:
        """Return up to ``max_items`` next items; an empty list once everything is read."""
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise UsageError(f"read(max_items={max_items!r}): max_items must be an int >= 1.")
        objects = self._require()
        page: list[Any] = []
        while len(page) < max_items:
            if self._format == "objects":
                ref = objects.next()
                if ref is None:
                    break
                self._current, self._index = ref, self._index + 1
                page.append(
                    {
                        "bucket": ref.bucket,
                        "key": ref.key,
                        "size": ref.size,
                        "etag": ref.etag.strip('"'),
                    }
                )
                continue
            if self._parser is None:
                ref = objects.next()
                if ref is None:
                    break
                self._open(ref, {})
            assert self._parser is not None
            try:
                got = self._parser.read(max_items - len(page))
            except StorageError:
                if page:  # the good part first; the parser raises again on the next read
                    return page
                raise
            if got:
                page.extend(got)
                continue
            self._parser.close()
            self._parser = None
            self._index += 1
        return page

    def count(self) -> int | None:
        """The row count of a single Parquet object (from its footer); else None."""
        self._require()
        if isinstance(self._parser, ParquetParser) and self._args["key"] is not None:
            return self._parser.num_rows()
        return None

    def checkpoint(self) -> dict[str, Any]:
        """``{"index", "key", "etag", "at"}``: the object being read and the position in it."""
        self._require()
        ref = self._current
        return {
            "index": self._index,
            "key": ref.key if ref is not None else None,
            "etag": ref.etag if ref is not None else None,
            "at": self._parser.position() if self._parser is not None else None,
        }

    def restore(self, checkpoint: cabc.Mapping[str, Any]) -> None:
        """Continue right after the last item of the run that took ``checkpoint``."""
        self._require()
        index, key, etag, at = (
            checkpoint.get(n) if isinstance(checkpoint, cabc.Mapping) else None
            for n in ("index", "key", "etag", "at")
        )
        if (
            isinstance(index, bool) or not isinstance(index, int) or index < 0
            or not (key is None or isinstance(key, str))
            or not (at is None or isinstance(at, dict))
        ):  # fmt: skip
            raise UsageError(
                f"S3ItemReader.restore({checkpoint!r}): not a checkpoint of this reader. Fix: "
                "pass a dict returned by S3ItemReader.checkpoint()."
            )
        if self._parser is not None:
            self._parser.close()
            self._parser = None
        if key is None:
            self._start(self._args["start_after"], index)
            return
        if at is None:  # the object ``key`` was finished: go on after it
            self._start(key, index)
            self._current = ObjectRef(self._bucket, key, 0, str(etag or ""))
            return
        self._start(key, index + 1)
        self._index = index
        ref = head_object(self._connection, self._bucket, key)
        if ref.etag != etag:
            raise StorageError(
                f"{ref.uri} changed since the checkpoint (ETag {etag} -> {ref.etag}), so the "
                "position in it is meaningless. Fix: run the scatter again from the start."
            )
        self._open(ref, at)

    def close(self) -> None:
        """Drop this run's state. Idempotent."""
        if self._parser is not None:
            self._parser.close()
        self._parser = None
        self._objects = None
        self._current = None

    # --- helpers ---------------------------------------------------------------------------
    def _require(self) -> ObjectSource:
        if self._objects is None:
            raise UsageError("S3ItemReader is not initialised. Fix: call init(deps) first.")
        return self._objects

    def _start(self, after: str, skip: int) -> None:
        """List objects after key ``after`` (prefix) or after the first ``skip`` (key,
        manifest); ``skip`` objects count as finished."""
        assert self._selection is not None
        self._objects = list_objects(self._connection, self._selection, after, skip)
        self._index = skip
        self._current = None

    def _open(self, ref: ObjectRef, at: dict[str, Any]) -> None:
        self._current = ref
        fmt, gzip = self._format_of(ref.key)
        chunk = self._args["chunk_size"]
        if fmt == "parquet":
            if gzip:
                raise StorageError(f"{ref.uri}: gzip-compressed Parquet cannot be streamed.")
            self._parser = ParquetParser(RangedFile(self._connection, ref, chunk), at)
            return
        offset = int(at.get("offset", 0))
        chunks = byte_chunks(self._connection, ref, offset, chunk, gzip=gzip)
        if fmt == "jsonl":
            self._parser = JsonLinesParser(chunks, ref, offset, int(at.get("line", 0)))
        elif fmt == "json":
            self._parser = JsonArrayParser(chunks, ref, at)
        else:
            dialect = self._args["dialect"]
            if ref.key.removesuffix(".gz").endswith(".tsv") and dialect == "excel":
                dialect = "excel-tab"
            self._parser = CsvParser(
                chunks, ref, at, dialect=dialect, fieldnames=self._args["fieldnames"],
                encoding=self._args["encoding"],
            )  # fmt: skip

    def _format_of(self, key: str) -> tuple[str, bool]:
        compression = self._args["compression"]
        gzip = compression == "gzip" or (compression == "auto" and key.endswith(".gz"))
        if self._format != "auto":
            return self._format, gzip
        stem = key.removesuffix(".gz") if key.endswith(".gz") else key
        for suffix, fmt in _SUFFIXES.items():
            if stem.endswith(suffix):
                return fmt, gzip
        raise StorageError(
            f"s3://{self._bucket}/{key}: cannot tell the format from the key suffix. Fix: pass "
            f"format= ('jsonl', 'json', 'csv' or 'parquet'), or name it {sorted(_SUFFIXES)}."
        )
