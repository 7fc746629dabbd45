"""Machinery the line-oriented file readers share: paths, byte offsets, decoding, errors.

Kept apart from :mod:`flowstone.readers` (the public reader classes) so that each stays
small. Nothing here is public API.
"""

from __future__ import annotations

import codecs
import collections.abc as cabc
import os
from typing import IO, Any

from flowstone.errors import StorageError, UsageError

__all__ = ["FileReader", "check_page_size", "checkpoint_int", "universal_lines"]

# Chunk size of the universal-newline splitter: large enough that the per-chunk work in
# Python is small next to the C splitting, small enough to stay a page of memory or two.
_CHUNK = 1 << 16


def check_page_size(max_items: int) -> None:
    """Refuse a page size that is not an int >= 1 (bools included)."""
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise UsageError(f"read(max_items={max_items!r}): max_items must be an int >= 1.")


def checkpoint_int(checkpoint: cabc.Mapping[str, Any], key: str, reader: str) -> int:
    """The non-negative int ``checkpoint[key]``, or a UsageError naming the reader."""
    value = checkpoint.get(key) if isinstance(checkpoint, cabc.Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(
            f"{reader}.restore({checkpoint!r}): expected a checkpoint with a non-negative "
            f"integer {key!r}. Fix: pass a dict returned by {reader}.checkpoint()."
        )
    return value


def universal_lines(file: IO[bytes]) -> cabc.Iterator[bytes]:
    r"""Yield the lines of ``file`` from its position, each ending in ``\r\n``, ``\r`` or ``\n``.

    The split of a text file opened with ``newline=''``: every line ending is a line ending
    (classic Mac ``\r`` too) and none is translated. ``bytes.splitlines`` splits at exactly
    these three, so only the last piece of a chunk needs holding back: it may be incomplete,
    or a ``\r`` whose ``\n`` is in the next chunk.
    """
    carry = b""
    while chunk := file.read(_CHUNK):
        lines = (carry + chunk).splitlines(keepends=True)
        carry = lines.pop()
        yield from lines
    if carry:
        yield carry


class FileReader:
    """Shared part of the file readers: the path, the position, decoding and data errors."""

    __slots__ = ("_bom", "_encoding", "_file", "_file_name", "_line", "_offset", "_path")

    _kind = "file"

    def __init__(self, path: Any, encoding: str) -> None:
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
        # A UTF-8 byte-order mark is dropped at the start of the file only (as a file opened
        # with encoding='utf-8-sig' does); a U+FEFF anywhere else is data.
        self._bom = utf8
        self._encoding = "utf-8" if utf8 else codec.name
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

    def _decode(self, raw: bytes, offset: int, line: int) -> str:
        """Decode the line ``raw`` that starts at byte ``offset`` of the file."""
        if offset == 0 and self._bom and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
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

    def _record_error(self, line: int, exc: BaseException, what: str) -> StorageError:
        """Any error parsing one record, as a StorageError naming the file and the line."""
        detail = str(exc) or "(no message)"
        if isinstance(exc, RecursionError):
            detail = "nested too deeply to parse"
        return self._data_error(
            line, f"cannot parse the {what}: {type(exc).__name__}: {detail}", "fix the record"
        )

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
        offset = checkpoint_int(checkpoint, "offset", f"readers.{self._kind}")
        line = checkpoint_int(checkpoint, "line", f"readers.{self._kind}")
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
