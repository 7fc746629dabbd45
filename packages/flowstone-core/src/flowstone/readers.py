"""Built-in item readers: stream scatter items page by page, resumably.

Every reader here implements :class:`flowstone.protocols.ItemReader`::

    fs.Scatter(reader=fs.readers.JsonLines("items.jsonl"))
    fs.Scatter(reader=fs.readers.Csv(lambda deps: deps["export_path"]))
    fs.Scatter(reader=fs.readers.Iterable(lambda deps: deps["urls"]))

Readers are reusable *definitions*. All per-run state is created by ``init`` (which also
drops any state left from an earlier run), so one reader object can serve several runs one
after another. For runs that overlap in time, give each its own ``copy.copy(reader)``: a
copy is always a fresh, un-initialised reader with the same configuration.

File readers track the byte offset of the last item they returned, so a checkpoint is a
small ``{"offset": ..., "line": ...}`` dict and ``restore`` is a single seek. Files must use
an ASCII-compatible encoding (UTF-8, Latin-1, cp1252...), in which a newline is one byte.
"""

from __future__ import annotations

import codecs
import collections.abc as cabc
import csv
import itertools
import json
import os
from typing import IO, Any, TypeAlias

from flowstone.errors import StorageError, UsageError

__all__ = ["Csv", "Iterable", "JsonLines", "PathSource"]

PathSource: TypeAlias = (
    str | os.PathLike[str] | cabc.Callable[[cabc.Mapping[str, Any]], str | os.PathLike[str]]
)
"""A file path, or a function of the asset's dependency values returning one."""

_ItemsSource: TypeAlias = (
    cabc.Iterable[Any] | cabc.Callable[[cabc.Mapping[str, Any]], cabc.Iterable[Any]]
)


def _check_page_size(max_items: int) -> None:
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise UsageError(f"read(max_items={max_items!r}): max_items must be an int >= 1.")


def _checkpoint_int(checkpoint: cabc.Mapping[str, Any], key: str, reader: str) -> int:
    value = checkpoint.get(key) if isinstance(checkpoint, cabc.Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(
            f"{reader}.restore({checkpoint!r}): expected a checkpoint with a non-negative "
            f"integer {key!r}. Fix: pass a dict returned by {reader}.checkpoint()."
        )
    return value


class Iterable:
    """Items from an in-memory iterable, or from a function of the asset's dependencies.

    Args:
        items: the items (a list, tuple, range, any iterable), or a callable that receives
            the asset's dependency values at ``init`` and returns them.

    The checkpoint is the number of items consumed; ``restore`` re-creates the items and
    skips that many, so resuming needs a re-iterable source (a sequence, or a callable
    that returns the same items in the same order). A one-shot iterator such as a
    generator object works for a single, non-resumed run only; a second ``init`` raises
    :class:`~flowstone.errors.UsageError`.

    Example::

        fs.Scatter(reader=fs.readers.Iterable(lambda deps: deps["customers"]))
    """

    __slots__ = ("_consumed", "_deps", "_items", "_iterator", "_one_shot_used", "_source")

    def __init__(self, items: _ItemsSource) -> None:
        if not callable(items) and not isinstance(items, cabc.Iterable):
            raise UsageError(
                f"readers.Iterable(items={items!r}): items must be an iterable or a callable "
                "taking the dependency values and returning an iterable."
            )
        self._source = items
        # Shared by copies: a one-shot iterator can be consumed once, whoever holds it.
        self._one_shot_used: list[bool] | None = (
            [False] if not callable(items) and iter(items) is items else None
        )
        self._deps: cabc.Mapping[str, Any] | None = None
        self._items: cabc.Iterable[Any] | None = None
        self._iterator: cabc.Iterator[Any] | None = None
        self._consumed = 0

    def __copy__(self) -> Iterable:
        fresh = Iterable(self._source)
        fresh._one_shot_used = self._one_shot_used
        return fresh

    def __repr__(self) -> str:
        return f"readers.Iterable({self._source!r})"

    def _start(self) -> cabc.Iterator[Any]:
        if callable(self._source):
            items = self._source(self._deps or {})
            if not isinstance(items, cabc.Iterable):
                raise UsageError(
                    f"readers.Iterable: the items callable {self._source!r} returned "
                    f"{type(items).__name__}, which is not iterable. Fix: return a list or "
                    "another iterable."
                )
        else:
            if self._one_shot_used is not None:
                if self._one_shot_used[0]:
                    raise UsageError(
                        "readers.Iterable was given a one-shot iterator that an earlier run "
                        "already consumed. Fix: pass a list, or a callable returning the items."
                    )
                self._one_shot_used[0] = True
            items = self._source
        self._items = items
        self._consumed = 0
        return iter(items)

    def init(self, deps: cabc.Mapping[str, Any]) -> None:
        """Create the items for this run (calling the items callable with ``deps``)."""
        self._deps = dict(deps)
        self._iterator = self._start()

    def _open_iterator(self) -> cabc.Iterator[Any]:
        if self._iterator is None:
            raise UsageError("readers.Iterable is not initialised. Fix: call init(deps) first.")
        return self._iterator

    def read(self, max_items: int) -> list[Any]:
        """Return up to ``max_items`` next items; an empty list once exhausted."""
        _check_page_size(max_items)
        page = list(itertools.islice(self._open_iterator(), max_items))
        self._consumed += len(page)
        return page

    def count(self) -> int | None:
        """``len(items)`` when the items are sized, else None."""
        self._open_iterator()
        return len(self._items) if isinstance(self._items, cabc.Sized) else None

    def checkpoint(self) -> dict[str, Any]:
        """``{"consumed": n}``: how many items this run has returned so far."""
        self._open_iterator()
        return {"consumed": self._consumed}

    def restore(self, checkpoint: cabc.Mapping[str, Any]) -> None:
        """Continue right after the ``consumed`` items recorded in ``checkpoint``."""
        target = _checkpoint_int(checkpoint, "consumed", "readers.Iterable")
        iterator = self._open_iterator()
        if target < self._consumed:
            iterator = self._iterator = self._start()
        skip = target - self._consumed
        self._consumed += sum(1 for _ in itertools.islice(iterator, skip))

    def close(self) -> None:
        """Drop this run's items. Idempotent."""
        self._iterator = None
        self._items = None
        self._deps = None


class _FileReader:
    """Shared machinery of the line-oriented file readers: path, offsets, decoding."""

    __slots__ = ("_encoding", "_file", "_file_name", "_line", "_offset", "_path")

    _kind = "file"

    def __init__(self, path: PathSource, encoding: str) -> None:
        if not callable(path) and not isinstance(path, str | os.PathLike):
            raise UsageError(
                f"readers.{self._kind}(path={path!r}): path must be a str, an os.PathLike, "
                "or a callable taking the dependency values and returning one."
            )
        try:
            codec = codecs.lookup(encoding)
        except LookupError as exc:
            raise UsageError(
                f"readers.{self._kind}: unknown encoding {encoding!r}. Fix: use a codec name "
                "such as 'utf-8' or 'latin-1'."
            ) from exc
        utf8 = codec.name in ("utf-8", "utf-8-sig")
        if not utf8 and "\n".encode(codec.name) != b"\n":
            raise UsageError(
                f"readers.{self._kind}: encoding {encoding!r} is not ASCII-compatible, so byte "
                "offsets cannot be checkpointed. Fix: convert the file to UTF-8."
            )
        self._path = path
        # Read a UTF-8 byte-order mark at the start of the file as a BOM, not as data.
        self._encoding = "utf-8-sig" if utf8 else codec.name
        self._file: IO[bytes] | None = None
        self._file_name = ""
        self._offset = 0
        self._line = 0

    def __repr__(self) -> str:
        return f"readers.{self._kind}({self._path!r})"

    def init(self, deps: cabc.Mapping[str, Any]) -> None:
        """Open the file (resolving a path callable with ``deps``) at its beginning."""
        self.close()
        path = self._path(deps) if callable(self._path) else self._path
        if not isinstance(path, str | os.PathLike):
            raise UsageError(
                f"readers.{self._kind}: the path callable {self._path!r} returned {path!r}. "
                "Fix: return a str or os.PathLike."
            )
        self._file_name = os.fsdecode(path)
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - kept open across pages; close()
        except OSError as exc:
            raise StorageError(
                f"readers.{self._kind} cannot open {self._file_name!r}: {exc.strerror or exc}. "
                "Fix: check the path and that the file exists and is readable."
            ) from exc
        self._offset = 0
        self._line = 0

    def _require_file(self) -> IO[bytes]:
        if self._file is None:
            raise UsageError(
                f"readers.{self._kind} is not initialised (or already closed). "
                "Fix: call init(deps) first."
            )
        return self._file

    def _decode(self, raw: bytes, line: int) -> str:
        try:
            return raw.decode(self._encoding)
        except UnicodeDecodeError as exc:
            raise self._data_error(
                line,
                f"cannot decode as {self._encoding}: {exc.reason}",
                "set encoding= to the file's encoding",
            ) from exc

    def _data_error(self, line: int, problem: str, fix: str) -> StorageError:
        return StorageError(f"{self._file_name}, line {line}: {problem}. Fix: {fix}.")

    def count(self) -> int | None:
        """Always None: counting would mean reading the whole file."""
        self._require_file()
        return None

    def checkpoint(self) -> dict[str, Any]:
        """``{"offset": bytes, "line": n}`` just after the last item returned."""
        self._require_file()
        return {"offset": self._offset, "line": self._line}

    def restore(self, checkpoint: cabc.Mapping[str, Any]) -> None:
        """Seek to a position recorded by :meth:`checkpoint`."""
        self._require_file()
        offset = _checkpoint_int(checkpoint, "offset", f"readers.{self._kind}")
        line = _checkpoint_int(checkpoint, "line", f"readers.{self._kind}")
        self._seek(offset, line)

    def _seek(self, offset: int, line: int) -> None:
        self._require_file().seek(offset)
        self._offset = offset
        self._line = line

    def close(self) -> None:
        """Close the file. Idempotent."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


class JsonLines(_FileReader):
    """One JSON value per line of a file (JSON Lines / NDJSON).

    Args:
        path: the file, or a callable receiving the dependency values at ``init``.
        encoding: the file's (ASCII-compatible) encoding; a UTF-8 BOM is ignored.
        skip_blank: skip empty and whitespace-only lines; if False they are errors.

    A malformed line raises :class:`~flowstone.errors.StorageError` naming the file, the
    line number and the JSON error; the reader's position is then left at the start of the
    page, so nothing is skipped silently. See the module docstring for reuse and copies.

    Example::

        fs.Scatter(reader=fs.readers.JsonLines("orders.jsonl"))
    """

    __slots__ = ("_skip_blank",)

    _kind = "JsonLines"

    def __init__(
        self, path: PathSource, *, encoding: str = "utf-8", skip_blank: bool = True
    ) -> None:
        super().__init__(path, encoding)
        self._skip_blank = skip_blank

    def __copy__(self) -> JsonLines:
        return JsonLines(self._path, encoding=self._encoding, skip_blank=self._skip_blank)

    def read(self, max_items: int) -> list[Any]:
        """Return up to ``max_items`` decoded lines; an empty list at the end of the file."""
        _check_page_size(max_items)
        file = self._require_file()
        offset, line = self._offset, self._line
        page: list[Any] = []
        try:
            while len(page) < max_items:
                raw = file.readline()
                if not raw:
                    break
                line += 1
                offset += len(raw)
                text = self._decode(raw, line)
                if not text.strip():
                    if self._skip_blank:
                        continue
                    raise self._data_error(
                        line, "blank line", "remove it, or create the reader with skip_blank=True"
                    )
                try:
                    page.append(json.loads(text))
                except json.JSONDecodeError as exc:
                    raise self._data_error(
                        line,
                        f"malformed JSON: {exc.msg} (column {exc.colno})",
                        "make every line one complete JSON value",
                    ) from exc
        except StorageError:
            # Leave the position at the page start: the failed page is not half-consumed.
            self._seek(self._offset, self._line)
            raise
        self._offset, self._line = offset, line
        return page


class Csv(_FileReader):
    """Rows of a CSV file as dicts keyed by column name.

    Args:
        path: the file, or a callable receiving the dependency values at ``init``.
        dialect: a :mod:`csv` dialect name or class (``"excel"``, ``"excel-tab"``...).
        fieldnames: the column names; when None the first record is the header row.
        encoding: the file's (ASCII-compatible) encoding; a UTF-8 BOM is ignored.

    Quoted fields may contain delimiters, quotes and newlines: records are parsed one at a
    time, so checkpoints always fall on record boundaries. Empty lines are skipped. A row
    shorter than the header gets None for the missing columns; a longer row, a duplicate
    header name or an unterminated quoted field raises :class:`~flowstone.errors.StorageError`
    naming the file and line. See the module docstring for reuse and copies.

    Example::

        fs.Scatter(reader=fs.readers.Csv("customers.csv"))
    """

    __slots__ = (
        "_dialect",
        "_eof",
        "_fieldnames",
        "_header",
        "_rows",
        "_scan_line",
        "_scan_offset",
    )

    _kind = "Csv"

    def __init__(
        self,
        path: PathSource,
        *,
        dialect: str | csv.Dialect | type[csv.Dialect] = "excel",
        fieldnames: cabc.Sequence[str] | None = None,
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(path, encoding)
        if isinstance(dialect, str):
            try:
                csv.get_dialect(dialect)
            except csv.Error as exc:
                raise UsageError(
                    f"readers.Csv: unknown dialect {dialect!r}. Fix: use one of "
                    f"{sorted(csv.list_dialects())} or a csv.Dialect class."
                ) from exc
        if isinstance(fieldnames, str):
            raise UsageError("readers.Csv: fieldnames must be a sequence of names, not a str.")
        self._dialect = dialect
        self._fieldnames = tuple(fieldnames) if fieldnames is not None else None
        self._header: tuple[str, ...] = ()
        self._rows: cabc.Iterator[list[str]] | None = None
        self._scan_offset = 0
        self._scan_line = 0
        self._eof = False

    def __copy__(self) -> Csv:
        return Csv(
            self._path, dialect=self._dialect, fieldnames=self._fieldnames, encoding=self._encoding
        )

    def init(self, deps: cabc.Mapping[str, Any]) -> None:
        """Open the file and, unless ``fieldnames`` were given, read the header row."""
        super().init(deps)
        self._seek(0, 0)
        if self._fieldnames is not None:
            self._header = self._fieldnames
            return
        try:
            header = self._next_record()
            self._header = tuple(header or ())
            duplicates = sorted({name for name in self._header if self._header.count(name) > 1})
            if duplicates:
                raise self._data_error(
                    1,
                    f"duplicate column names {duplicates}",
                    "rename the columns, or pass fieldnames= with unique names",
                )
        except StorageError:
            self.close()
            raise
        self._offset, self._line = self._scan_offset, self._scan_line

    def _lines(self) -> cabc.Iterator[str]:
        file = self._require_file()
        while raw := file.readline():
            self._scan_line += 1
            text = self._decode(raw, self._scan_line)
            self._scan_offset += len(raw)
            yield text
        self._eof = True

    def _seek(self, offset: int, line: int) -> None:
        super()._seek(offset, line)
        self._scan_offset, self._scan_line = offset, line
        self._rows = csv.reader(self._lines(), self._dialect)

    def _next_record(self) -> list[str] | None:
        """The next non-empty record, or None at the end; records start at ``_scan_*``."""
        if self._rows is None:
            raise UsageError("readers.Csv is not initialised. Fix: call init(deps) first.")
        while True:
            start = self._scan_line
            self._eof = False
            try:
                row = next(self._rows, None)
            except csv.Error as exc:
                raise self._data_error(
                    start + 1,
                    f"invalid CSV: {exc}",
                    "fix the record or choose the matching dialect=",
                ) from exc
            if row is not None and self._eof:
                raise self._data_error(
                    start + 1,
                    "quoted field is never closed",
                    "close the quote, or check the file is complete",
                )
            if row != []:
                return row

    def read(self, max_items: int) -> list[Any]:
        """Return up to ``max_items`` rows as dicts; an empty list at the end of the file."""
        _check_page_size(max_items)
        self._require_file()
        page: list[dict[str, str | None]] = []
        try:
            while len(page) < max_items:
                start = self._scan_line
                row = self._next_record()
                if row is None:
                    break
                if len(row) > len(self._header):
                    raise self._data_error(
                        start + 1,
                        f"{len(row)} fields but {len(self._header)} columns",
                        "quote fields that contain the delimiter, or fix the header",
                    )
                values: list[str | None] = list(row)
                values += [None] * (len(self._header) - len(row))
                page.append(dict(zip(self._header, values, strict=True)))
        except (StorageError, UsageError):
            # Leave the position at the page start: the failed page is not half-consumed.
            self._seek(self._offset, self._line)
            raise
        self._offset, self._line = self._scan_offset, self._scan_line
        return page
