"""``JsonLinesFileTransport``: the OpenLineage client's ``FileTransport`` for one local file in
append mode, which also takes events already serialized, a batch per write.

The client's ``FileTransport`` opens the file for every event. This one keeps one file
descriptor open (``O_APPEND``) and writes each batch of JSON lines with one ``write``, so
lines of other processes appending to the same file never interleave inside a line. Like
``logging.handlers.WatchedFileHandler`` it reopens the path when the file there is no
longer the one it has open (moved away by log rotation, or deleted), as the client's
opening per event would. Nothing is buffered in the process: what ``write_lines``
returned from is in the file (as far as the operating system is concerned), and ``close``
only closes the descriptor.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from openlineage.client.serde import Serde
from openlineage.client.transport.file import FileConfig, FileTransport

if TYPE_CHECKING:
    from openlineage.client.client import Event

__all__ = ["JsonLinesFileTransport", "LineWriter", "LinesNotWritten"]


@runtime_checkable
class LineWriter(Protocol):
    """A transport that also takes events already serialized (one JSON document each)."""

    def write_lines(self, lines: Sequence[str]) -> None:
        """Deliver ``lines`` in order; raise :class:`LinesNotWritten` when it cannot."""


class LinesNotWritten(RuntimeError):
    """A batch was not (completely) written; its first ``written`` lines were."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


class JsonLinesFileTransport(FileTransport):
    """Appends one JSON document per line to the local file ``path``.

    ``emit`` (the client's interface) writes ``Serde.to_json(event)``, as the client's
    ``FileTransport`` does; :meth:`write_lines` writes events serialized by the caller.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(FileConfig(log_file_path=os.fspath(path), append=True))
        self.path = os.fspath(path)
        self._fd: int | None = None
        self._opened: tuple[int, int] = (0, 0)  # st_dev, st_ino of the open file
        self._torn = False  # a failed write left part of a line at the file's end
        self._lock = threading.Lock()
        _OPEN.add(self)

    def _after_fork(self) -> None:
        """In a forked child: a thread of the parent may have held the lock mid-write;
        the child starts with a fresh lock (the appending descriptor is safe to share)."""
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        self.write_lines([Serde.to_json(event)])

    def write_lines(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        with self._lock:
            data, done, ended = memoryview(b""), 0, False
            try:
                self._reopen_if_moved()
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                       | os.O_CLOEXEC, 0o666)
                    opened = os.fstat(self._fd)
                    self._opened = (opened.st_dev, opened.st_ino)
                # a torn line is ended first: the next event starts a line of its own
                ended = self._torn
                data = memoryview((("\n" if ended else "") + text).encode("utf-8"))
                while done < len(data):
                    done += os.write(self._fd, data[done:])
                self._torn = False
            except OSError as exc:
                head = bytes(data[:done])
                self._torn = self._torn if not head else not head.endswith(b"\n")
                written = head.count(b"\n") - (1 if ended and head else 0)
                raise LinesNotWritten(f"Failed to write to log file `{self.path}`: {exc}",
                                      written) from exc

    def _reopen_if_moved(self) -> None:
        if self._fd is None:
            return
        try:
            there = os.stat(self.path)
            moved = (there.st_dev, there.st_ino) != self._opened
        except FileNotFoundError:
            moved = True
        if moved:
            fd, self._fd = self._fd, None
            self._torn = False  # a torn line stays in the old file
            os.close(fd)

    def close(self, timeout: float = -1) -> bool:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        return True


# every open transport of this process, so a forked child can reset their locks
_OPEN: weakref.WeakSet[JsonLinesFileTransport] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for transport in list(_OPEN):
        transport._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
