"""Item parsers for one text object: JSON lines and JSON array (CSV: ``_csv``; Parquet:
``_parquet``).

Each parser starts at a *position* (a small JSON-able dict it produced earlier, ``{}`` for
the beginning), returns items page by page, and reports the position right after the last
item it returned. A record that cannot be parsed raises :class:`StorageError` naming the
object, the line (or item / row group) and the byte offset; the parser then stays at the
last good record: ``read`` returns the good part of the page, the next ``read`` raises.
"""

from __future__ import annotations

import codecs
import json
import json.scanner
import re
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Protocol

from flowstone.errors import StorageError
from flowstone_io_s3._ranges import ObjectRef

__all__ = ["BOM", "JsonArrayParser", "JsonLinesParser", "LineParser", "Parser"]

BOM = codecs.BOM_UTF8
_WS = re.compile(r"[ \t\r\n]*")


class Parser(Protocol):
    def read(self, max_items: int) -> list[Any]: ...

    def position(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class _Failing:
    """Remembers a record error so the good part of a page can be returned first; from
    then on every read raises it (the position stays at the last good record, and a
    reader restored from the checkpoint starts there again)."""

    __slots__ = ("_error",)

    def __init__(self) -> None:
        self._error: StorageError | None = None

    def fail(self, error: StorageError, page: list[Any]) -> list[Any]:
        self._error = error
        if page:
            return page
        raise error

    def check(self) -> None:
        if self._error is not None:
            raise self._error


class LineSplitter:
    """Complete lines of a chunk stream, with their endings (``\\n``, ``\\r\\n``, ``\\r``:
    as a file opened with ``newline=''``), a chunk's worth at a time.

    A line longer than a chunk is collected in pieces and joined once, so long lines cost
    linear time (botocore's ``iter_lines`` re-splits its whole buffer per 1 KiB).
    """

    __slots__ = ("_chunks", "_tail")

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._tail: list[bytes] = []

    def batch(self) -> list[bytes] | None:
        """The next complete lines, or None at the end of the object."""
        for chunk in self._chunks:
            if b"\n" not in chunk and b"\r" not in chunk:
                self._tail.append(chunk)
                continue
            data = b"".join([*self._tail, chunk]) if self._tail else chunk
            lines = data.splitlines(keepends=True)
            # The last line goes on in the next chunk unless it ends with "\n" (a final
            # "\r" may be the first half of "\r\n").
            self._tail = [] if lines[-1].endswith(b"\n") else [lines.pop()]
            if lines:
                return lines
        if self._tail:
            line, self._tail = b"".join(self._tail), []
            return [line]
        return None

    def close(self) -> None:
        """Stop the chunk stream now (its background fetch ends with it), not whenever
        the garbage collector gets to it."""
        _close(self._chunks)
        self._tail = []


def _close(chunks: Iterator[bytes]) -> None:
    if isinstance(chunks, Generator):
        chunks.close()


class LineParser:
    """Shared position keeping of the line-based parsers."""

    __slots__ = ("_batch", "_failing", "_i", "_line", "_offset", "_ref", "_split")

    def __init__(self, chunks: Iterator[bytes], ref: ObjectRef, offset: int, line: int) -> None:
        self._split = LineSplitter(chunks)
        self._ref = ref
        self._offset = offset
        self._line = line
        self._batch: list[bytes] = []
        self._i = 0
        self._failing = _Failing()

    def _error(self, line: int, offset: int, problem: str, fix: str) -> StorageError:
        return StorageError(f"{self._ref.uri}, line {line} (byte {offset}): {problem}. Fix: {fix}.")

    def position(self) -> dict[str, Any]:
        return {"offset": self._offset, "line": self._line}

    def close(self) -> None:
        self._batch = []
        self._split.close()


class JsonLinesParser(LineParser):
    """One JSON value per line; blank lines are skipped.

    Lines are decoded as UTF-8 and parsed with the json module's scanner directly, which
    is about twice as fast as ``json.loads`` per line (that re-detects the encoding and
    re-checks whitespace for every call); anything unusual (a BOM, blank or padded lines,
    another encoding, an error) takes the ``json.loads`` path, so the accepted input is
    exactly what ``json.loads`` accepts.
    """

    __slots__ = ("_scan",)

    def __init__(self, chunks: Iterator[bytes], ref: ObjectRef, offset: int, line: int) -> None:
        super().__init__(chunks, ref, offset, line)
        # typeshed declares make_scanner's argument as the scanner class itself.
        self._scan: Any = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]

    def _fast(self, lines: Sequence[bytes]) -> list[Any]:
        scan = self._scan
        values: list[Any] = []
        append = values.append
        for raw in lines:
            text = raw.decode()
            value, end = scan(text, 0)
            if end != len(text) and not text[end:].isspace():
                raise ValueError("trailing data")
            append(value)
        return values

    def read(self, max_items: int) -> list[Any]:
        self._failing.check()
        page: list[Any] = []
        while len(page) < max_items:
            if self._i >= len(self._batch):
                batch = self._split.batch()
                if batch is None:
                    break
                self._batch, self._i = batch, 0
            lines = self._batch[self._i : self._i + max_items - len(page)]
            try:
                page.extend(self._fast(lines))  # a page of good lines
            except (ValueError, RecursionError, StopIteration):
                done = self._slow(lines, page)
                if done < len(lines):
                    return self._failing.fail(self._bad(lines[done]), page)
                continue
            self._i += len(lines)
            self._offset += sum(map(len, lines))
            self._line += len(lines)
        return page

    def _slow(self, lines: Sequence[bytes], page: list[Any]) -> int:
        """Parse ``lines`` one by one (skipping blanks); return how many were consumed."""
        for done, raw in enumerate(lines):
            if raw.strip() in (b"", BOM):
                pass
            else:
                try:
                    value = json.loads(raw)
                except (ValueError, RecursionError):
                    return done
                page.append(value)
            self._i += 1
            self._offset += len(raw)
            self._line += 1
        return len(lines)

    def _bad(self, raw: bytes) -> StorageError:
        try:
            json.loads(raw)
        except json.JSONDecodeError as exc:
            problem = f"malformed JSON: {exc.msg} (column {exc.colno})"
        except (ValueError, RecursionError) as exc:
            problem = f"unreadable JSON value: {type(exc).__name__}: {exc}"
        else:  # pragma: no cover - only lines json.loads rejected get here
            problem = "unreadable JSON value"
        return self._error(
            self._line + 1, self._offset, problem, "make every line one complete JSON value"
        )


class JsonArrayParser:
    """The elements of one top-level JSON array, streamed element by element."""

    __slots__ = (
        "_ascii",
        "_at",
        "_buf",
        "_chunks",
        "_decoder",
        "_eof",
        "_failing",
        "_index",
        "_offset",
        "_ref",
        "_state",
    )  # fmt: skip

    def __init__(self, chunks: Iterator[bytes], ref: ObjectRef, position: dict[str, Any]) -> None:
        self._chunks = chunks
        self._ref = ref
        self._offset = int(position.get("offset", 0))
        self._state = str(position.get("state", "start"))
        self._index = int(position.get("index", 0))
        self._decoder = codecs.getincrementaldecoder(
            "utf-8-sig" if self._offset == 0 else "utf-8"
        )()
        self._buf = ""
        self._at = 0
        self._ascii = True
        self._eof = self._state == "done"
        self._failing = _Failing()

    def position(self) -> dict[str, Any]:
        return {"offset": self._offset, "state": self._state, "index": self._index}

    def close(self) -> None:
        self._buf = ""
        _close(self._chunks)

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = next(self._chunks, None)
        try:
            text = self._decoder.decode(chunk or b"", final=chunk is None)
        except UnicodeDecodeError as exc:
            raise self._error(f"not UTF-8 ({exc.reason})") from exc
        self._eof = chunk is None
        self._buf = self._buf[self._at :] + text
        self._at = 0
        self._ascii = self._buf.isascii()
        return bool(text) or not self._eof

    def _advance(self, to: int) -> None:
        skipped = to - self._at
        self._offset += skipped if self._ascii else len(self._buf[self._at : to].encode())
        self._at = to

    def _peek(self) -> str:
        """The next non-blank character ("" at the end), consuming the blanks."""
        while True:
            self._advance(_WS.match(self._buf, self._at).end())  # type: ignore[union-attr]
            if self._at < len(self._buf):
                return self._buf[self._at]
            if not self._more():
                return ""

    def _error(self, problem: str) -> StorageError:
        return StorageError(
            f"{self._ref.uri}, item {self._index + 1} (byte {self._offset}): {problem}. "
            "Fix: the object must hold one JSON array of values."
        )

    def read(self, max_items: int) -> list[Any]:
        self._failing.check()
        page: list[Any] = []
        try:
            while len(page) < max_items and self._state != "done":
                if self._state == "start":
                    if self._peek() != "[":
                        raise self._error("the object does not start with '['")
                    self._advance(self._at + 1)
                    self._state = "done" if self._peek() == "]" else "item"
                    continue
                page.append(self._element())
        except StorageError as exc:
            return self._failing.fail(exc, page)
        return page

    def _element(self) -> Any:
        decode = json.JSONDecoder().raw_decode
        while True:
            if self._peek() == "":
                raise self._error("the array is never closed with ']'")
            try:
                value, end = decode(self._buf, self._at)
            except json.JSONDecodeError as exc:
                if self._more():
                    continue
                raise self._error(f"malformed JSON: {exc.msg}") from exc
            except (ValueError, RecursionError) as exc:
                raise self._error(f"unreadable JSON value: {type(exc).__name__}") from exc
            after = _WS.match(self._buf, end).end()  # type: ignore[union-attr]
            if after >= len(self._buf) and self._more():
                continue  # a number may go on in the next chunk: parse again with more text
            separator = self._buf[after : after + 1]
            if separator not in (",", "]"):
                raise self._error(f"expected ',' or ']' after the value, found {separator!r}")
            self._advance(after + 1)
            self._index += 1
            if separator == "]":
                self._state = "done"
            return value
