"""Reading one S3 object as a stream of byte chunks, from any offset, with ranged GETs.

Why not ``get_object()["Body"].iter_lines()``: botocore's line iterator re-splits its
pending buffer on every 1 KiB read, which is quadratic on long lines, and one long-lived
response stream dies with ``IncompleteReadError`` on flaky networks with no way to go on.
Here each request is a ranged GET of ``chunk_size`` bytes (several MiB), the next range is
fetched in the background while the current one is parsed, a broken transfer is resumed
from the last byte received, and ``If-Match`` on the ETag makes an object replaced while it
is read fail loudly instead of mixing two versions. Memory holds at most two chunks.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flowstone.errors import StorageError, ValueNotFoundError
from flowstone_io_s3.connection import Connection, error_code, service_error

__all__ = ["ObjectRef", "RangedFile", "byte_chunks", "head_object"]

_RETRIES = 5
_READ = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object as listed or HEADed: enough to read it and to notice it changed."""

    bucket: str
    key: str
    size: int
    etag: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def head_object(connection: Connection, bucket: str, key: str) -> ObjectRef:
    """HEAD one object.

    Raises:
        StorageError: missing object or bucket, access denied (names the operation).
    """
    client = connection.get()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        error = service_error(
            exc, operation="HeadObject", target=f"s3://{bucket}/{key}", connection=connection
        )
        if isinstance(error, ValueNotFoundError):
            # A HEAD 404 cannot tell a missing key from a missing bucket: ask the bucket.
            try:
                client.head_bucket(Bucket=bucket)
            except Exception as bucket_exc:
                if error_code(bucket_exc) in ("404", "NoSuchBucket", "NotFound"):
                    error = StorageError(
                        f"bucket {bucket!r} does not exist at endpoint {connection.where()}. "
                        "Fix: create the bucket, or check the bucket name and endpoint_url=."
                    )
        raise error from exc
    return ObjectRef(bucket, key, int(head["ContentLength"]), str(head["ETag"]))


def _fetch(connection: Connection, ref: ObjectRef, start: int, end: int) -> bytes:
    """Bytes ``start..end-1``; a transfer broken mid-way goes on from the last byte read."""
    parts: list[bytes] = []
    got = start
    failures = 0
    while got < end:
        try:
            response = connection.get().get_object(
                Bucket=ref.bucket, Key=ref.key, Range=f"bytes={got}-{end - 1}", IfMatch=ref.etag
            )
            body = response["Body"]
            try:
                while got < end and (piece := body.read(min(_READ, end - got))):
                    parts.append(piece)
                    got += len(piece)
            finally:
                body.close()
            if got < end:
                raise StorageError(f"{ref.uri}: the response ended at byte {got} of {end}")
        except Exception as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):
                raise StorageError(
                    f"{ref.uri} was replaced while it was being read (its ETag is no longer "
                    f"{ref.etag}), at byte {got}. Fix: run again; objects must not change "
                    "while a reader reads them."
                ) from exc
            failures += 1
            if failures > _RETRIES or error_code(exc) not in ("", "500", "503", "SlowDown"):
                raise service_error(
                    exc, operation="GetObject", target=f"{ref.uri} (byte {got})",
                    connection=connection,
                ) from exc  # fmt: skip
            # IncompleteReadError, a reset connection, a 5xx: resume from the last good byte.
    return b"".join(parts) if len(parts) != 1 else parts[0]


def raw_chunks(connection: Connection, ref: ObjectRef, start: int, size: int) -> Iterator[bytes]:
    """The object's bytes from ``start`` to the end, in chunks of ``size``, one GET ahead."""
    if start >= ref.size:
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="flowstone-s3-read")
    pending: Future[bytes] | None = None
    try:
        pos = start
        pending = pool.submit(_fetch, connection, ref, pos, min(pos + size, ref.size))
        while pending is not None:
            data = pending.result()
            pos += len(data)
            pending = (
                pool.submit(_fetch, connection, ref, pos, min(pos + size, ref.size))
                if pos < ref.size
                else None
            )
            yield data
    finally:
        # Not waiting: this may run in the garbage collector, on any thread (even the
        # pool's own); a fetch still in flight finishes on its own and the thread ends.
        pool.shutdown(wait=False, cancel_futures=True)


def byte_chunks(
    connection: Connection, ref: ObjectRef, start: int, size: int, *, gzip: bool
) -> Iterator[bytes]:
    """The object's (decompressed, if ``gzip``) bytes from logical offset ``start``.

    A gzip stream cannot be entered in the middle, so ``start`` is reached by decompressing
    from the beginning and dropping what comes before it (memory stays at one chunk:
    output is produced at most ``size`` bytes at a time, also for highly compressed data).
    """
    if not gzip:
        yield from raw_chunks(connection, ref, start, size)
        return
    skip = start
    inflate = zlib.decompressobj(wbits=31)
    consumed = 0
    for raw in raw_chunks(connection, ref, 0, size):
        data = raw
        while data:
            try:
                out = inflate.decompress(data, size)
            except zlib.error as exc:
                raise StorageError(
                    f"{ref.uri} is not valid gzip (compressed byte {consumed}): {exc}. "
                    "Fix: check the object, or set compression='none' if it is not compressed."
                ) from exc
            used = len(data) - len(inflate.unconsumed_tail)
            consumed += used
            data = inflate.unconsumed_tail
            if inflate.eof:
                # Concatenated gzip members (e.g. appended logs) read as one stream.
                data = inflate.unused_data + data
                consumed -= len(inflate.unused_data)
                inflate = zlib.decompressobj(wbits=31)
            if skip >= len(out):
                skip -= len(out)
                continue
            yield out[skip:] if skip else out
            skip = 0
    if skip:
        raise StorageError(
            f"{ref.uri} is shorter than the checkpoint's offset {start}. The object changed "
            "since the checkpoint; run the scatter again."
        )


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over one object (for pyarrow's Parquet reader): every
    read is served from a read-ahead buffer filled by ranged GETs of ``chunk_size``."""

    def __init__(self, connection: Connection, ref: ObjectRef, chunk_size: int) -> None:
        super().__init__()
        self._connection = connection
        self._ref = ref
        self._chunk = chunk_size
        self._pos = 0
        self._buffer = b""
        self._buffer_start = 0

    @property
    def ref(self) -> ObjectRef:
        return self._ref

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._ref.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def size(self) -> int:
        return self._ref.size

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        end = self._ref.size if size is None or size < 0 else min(self._ref.size, self._pos + size)
        if end <= self._pos:
            return b""
        lo, hi = self._buffer_start, self._buffer_start + len(self._buffer)
        if not (lo <= self._pos and end <= hi):
            fetch_end = min(self._ref.size, max(end, self._pos + self._chunk))
            self._buffer = _fetch(self._connection, self._ref, self._pos, fetch_end)
            self._buffer_start = self._pos
            lo = self._pos
        data = self._buffer[self._pos - lo : end - lo]
        self._pos = end
        return data
