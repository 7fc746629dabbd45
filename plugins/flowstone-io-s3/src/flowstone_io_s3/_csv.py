"""Rows of one CSV object, parsed as the core ``readers.Csv`` parses a file."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from typing import Any

from flowstone.errors import StorageError
from flowstone_io_s3._formats import BOM, LineParser
from flowstone_io_s3._ranges import ObjectRef

__all__ = ["CsvParser"]


class CsvParser(LineParser):
    """Rows as dicts keyed by the header (read from the object, or given)."""

    __slots__ = ("_dialect", "_encoding", "_eof", "_header", "_rows", "_scan_line", "_scan_off")

    def __init__(
        self,
        chunks: Iterator[bytes],
        ref: ObjectRef,
        position: dict[str, Any],
        *,
        dialect: Any,
        fieldnames: Sequence[str] | None,
        encoding: str,
    ) -> None:
        super().__init__(chunks, ref, position.get("offset", 0), position.get("line", 0))
        self._dialect = dialect
        self._encoding = encoding
        self._scan_off, self._scan_line = self._offset, self._line
        self._eof = False
        self._rows = csv.reader(self._lines(), dialect)
        header = position.get("header", fieldnames)
        if header is None:
            header = self._next_record() or []
            duplicates = sorted({n for n in header if header.count(n) > 1})
            if duplicates:
                raise self._error(
                    1, 0, f"duplicate column names {duplicates}",
                    "rename the columns, or pass fieldnames= with unique names",
                )  # fmt: skip
            self._offset, self._line = self._scan_off, self._scan_line
        self._header: tuple[str, ...] = tuple(header)

    def position(self) -> dict[str, Any]:
        return {"offset": self._offset, "line": self._line, "header": list(self._header)}

    def _lines(self) -> Iterator[str]:
        while (batch := self._split.batch()) is not None:
            for raw in batch:
                # A byte-order mark is dropped at the start of the object only.
                bom = self._scan_off == 0 and raw.startswith(BOM)
                text_raw = raw[len(BOM) :] if bom else raw
                try:
                    text = text_raw.decode(self._encoding)
                except UnicodeDecodeError as exc:
                    raise self._error(
                        self._scan_line + 1, self._scan_off,
                        f"cannot decode as {self._encoding}: {exc.reason}",
                        "set encoding= to the object's encoding",
                    ) from exc  # fmt: skip
                self._scan_line += 1
                self._scan_off += len(raw)
                yield text
        self._eof = True

    def _next_record(self) -> list[str] | None:
        while True:
            start, start_off = self._scan_line, self._scan_off
            self._eof = False
            try:
                row = next(self._rows, None)
            except StorageError:
                raise
            except csv.Error as exc:
                raise self._error(
                    start + 1, start_off, f"invalid CSV: {exc}",
                    "fix the record or choose the matching dialect=",
                ) from exc  # fmt: skip
            except Exception as exc:
                raise self._error(
                    start + 1, start_off, f"unreadable CSV record: {type(exc).__name__}: {exc}",
                    "fix the record",
                ) from exc  # fmt: skip
            if row is not None and self._eof:
                raise self._error(
                    start + 1, start_off, "quoted field is never closed",
                    "close the quote, or check the object is complete",
                )  # fmt: skip
            if row != []:
                return row

    def read(self, max_items: int) -> list[Any]:
        self._failing.check()
        page: list[dict[str, str | None]] = []
        header, width = self._header, len(self._header)
        try:
            while len(page) < max_items:
                start, start_off = self._scan_line, self._scan_off
                row = self._next_record()
                if row is None:
                    break
                if len(row) > width:
                    raise self._error(
                        start + 1, start_off, f"{len(row)} fields but {width} columns",
                        "quote fields that contain the delimiter, or fix the header",
                    )  # fmt: skip
                values: list[str | None] = list(row)
                if len(row) < width:
                    values += [None] * (width - len(row))
                page.append(dict(zip(header, values, strict=True)))
                self._offset, self._line = self._scan_off, self._scan_line
        except StorageError as exc:
            return self._failing.fail(exc, page)
        return page
