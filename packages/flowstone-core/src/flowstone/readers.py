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
A UTF-8 byte-order mark is dropped at the start of the file only.

A record that cannot be read (undecodable bytes, malformed JSON or CSV, an integer too long
for ``int``, nesting too deep to parse...) raises :class:`~flowstone.errors.StorageError`
naming the file and the line, and the reader stays at the last good record: ``read``
returns the good records of the page before it, and the next ``read`` raises. The
checkpoint always matches the position, so nothing is skipped silently.
"""

from __future__ import annotations

import collections.abc as cabc
import csv
import itertools
import json
import os
from typing import Any, TypeAlias

from flowstone._internal.file_reading import (
    FileReader,
    check_page_size,
    checkpoint_int,
    universal_lines,
)
from flowstone.errors import StorageError, UsageError

__all__ = ["Csv", "Iterable", "JsonLines", "PathSource"]

PathSource: TypeAlias = (
    str | os.PathLike[str] | cabc.Callable[[cabc.Mapping[str, Any]], str | os.PathLike[str]]
)
"""A file path, or a function of the asset's dependency values returning one."""

_ItemsSource: TypeAlias = (
    cabc.Iterable[Any] | cabc.Callable[[cabc.Mapping[str, Any]], cabc.Iterable[Any]]
)


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
        check_page_size(max_items)
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
        target = checkpoint_int(checkpoint, "consumed", "readers.Iterable")
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


class JsonLines(FileReader):
    """One JSON value per line of a file (JSON Lines / NDJSON).

    Args:
        path: the file, or a callable receiving the dependency values at ``init``.
        encoding: the file's (ASCII-compatible) encoding; a UTF-8 BOM is ignored.
        skip_blank: skip empty and whitespace-only lines; if False they are errors.

    Lines end in ``\n`` (or ``\r\n``). A malformed line raises
    :class:`~flowstone.errors.StorageError` naming the file, the line number and the JSON
    error, and the reader stays at the last good line (see the module docstring, also for
    reuse and copies).

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
        check_page_size(max_items)
        file = self._require_file()
        offset, line = self._offset, self._line
        page: list[Any] = []
        try:
            while len(page) < max_items:
                raw = file.readline()
                if not raw:
                    break
                text = self._decode(raw, offset, line + 1)
                if not text.strip() and not self._skip_blank:
                    raise self._data_error(
                        line + 1,
                        "blank line",
                        "remove it, or create the reader with skip_blank=True",
                    )
                if text.strip():
                    page.append(self._parse(text, line + 1))
                offset, line = offset + len(raw), line + 1
        except StorageError:
            # Stay at the last good record: hand back the good part of the page, and let
            # the next read raise (it starts at the bad record).
            self._seek(offset, line)
            if page:
                return page
            raise
        self._offset, self._line = offset, line
        return page

    def _parse(self, text: str, line: int) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._data_error(
                line,
                f"malformed JSON: {exc.msg} (column {exc.colno})",
                "make every line one complete JSON value",
            ) from exc
        except Exception as exc:  # e.g. ValueError (int too long), RecursionError
            raise self._record_error(line, exc, "JSON value") from exc


class Csv(FileReader):
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
        # As csv.reader over a file opened with newline='': \r, \n and \r\n all end a line.
        for raw in universal_lines(self._require_file()):
            text = self._decode(raw, self._scan_offset, self._scan_line + 1)
            self._scan_line += 1
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
            except StorageError:
                raise
            except csv.Error as exc:
                raise self._data_error(
                    start + 1,
                    f"invalid CSV: {exc}",
                    "fix the record or choose the matching dialect=",
                ) from exc
            except Exception as exc:  # e.g. ValueError (int too long), RecursionError
                raise self._record_error(start + 1, exc, "CSV record") from exc
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
        check_page_size(max_items)
        self._require_file()
        page: list[dict[str, str | None]] = []
        good = (self._offset, self._line)
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
                good = (self._scan_offset, self._scan_line)
        except (StorageError, UsageError):
            # Stay at the last good record: hand back the good part of the page, and let
            # the next read raise (it starts at the bad record).
            self._seek(*good)
            if page:
                return page
            raise
        self._offset, self._line = self._scan_offset, self._scan_line
        return page
