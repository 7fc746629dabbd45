"""Which objects an S3ItemReader reads: one key, a manifest's keys, or a listed prefix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from flowstone.errors import StorageError
from flowstone_io_s3._ranges import ObjectRef, head_object
from flowstone_io_s3.connection import Connection, service_error

__all__ = ["ObjectSource", "Selection", "list_objects", "parse_manifest"]

_MANIFEST_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Selection:
    """The objects of one reader run (key/prefix/manifest already resolved)."""

    bucket: str
    key: str | None
    prefix: str | None
    manifest: str | None
    suffix: str
    start_after: str
    max_objects: int | None


class ObjectSource:
    """The selected objects one at a time, listing lazily (one page of 1,000 at a time)."""

    __slots__ = ("_iterator",)

    def __init__(self, iterator: Iterator[ObjectRef]) -> None:
        self._iterator = iterator

    def next(self) -> ObjectRef | None:
        return next(self._iterator, None)


def list_objects(
    connection: Connection, selection: Selection, after: str, skip: int
) -> ObjectSource:
    """The objects after key ``after`` (prefix listing) or after the first ``skip`` (a key
    or a manifest's keys); ``skip`` also counts against ``max_objects``."""
    if selection.prefix is not None:
        return ObjectSource(_listed(connection, selection, after, skip))
    return ObjectSource(_named(connection, selection, skip))


def _listed(connection: Connection, s: Selection, after: str, skip: int) -> Iterator[ObjectRef]:
    remaining = None if s.max_objects is None else s.max_objects - skip
    if remaining is not None and remaining <= 0:
        return
    params = {"Bucket": s.bucket, "Prefix": s.prefix or ""}
    start = max(after, s.start_after)
    if start:
        params["StartAfter"] = start
    while True:
        try:
            page = connection.get().list_objects_v2(**params)
        except Exception as exc:
            raise service_error(
                exc, operation="ListObjectsV2", target=f"s3://{s.bucket}/{s.prefix}",
                connection=connection,
            ) from exc  # fmt: skip
        for entry in page.get("Contents", ()):
            key = str(entry["Key"])
            if s.suffix and not key.endswith(s.suffix):
                continue
            yield ObjectRef(s.bucket, key, int(entry["Size"]), str(entry["ETag"]))
            if remaining is not None:
                remaining -= 1
                if remaining <= 0:
                    return
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return
        params.pop("StartAfter", None)
        params["ContinuationToken"] = token


def _named(connection: Connection, s: Selection, skip: int) -> Iterator[ObjectRef]:
    if s.key is not None:
        keys = [s.key]
    else:
        assert s.manifest is not None
        keys = _read_manifest(connection, s.bucket, s.manifest)
    for key in keys[skip:]:
        yield head_object(connection, s.bucket, key)


def _read_manifest(connection: Connection, bucket: str, key: str) -> list[str]:
    ref = head_object(connection, bucket, key)
    if ref.size > _MANIFEST_LIMIT:
        raise StorageError(
            f"manifest {ref.uri} is {ref.size} bytes; manifests are read whole and may be at "
            "most 64 MiB. Fix: split it, or read the objects with prefix=."
        )
    try:
        body = connection.get().get_object(Bucket=bucket, Key=key, IfMatch=ref.etag)["Body"]
        data = body.read()
    except Exception as exc:
        raise service_error(
            exc, operation="GetObject", target=ref.uri, connection=connection
        ) from exc
    return parse_manifest(data, ref.uri)


def parse_manifest(data: bytes, uri: str) -> list[str]:
    """Keys listed by a manifest: a JSON array of keys (or of ``{"key": ...}``), or one key
    per line.

    Raises:
        StorageError: anything else, naming the manifest.
    """
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise StorageError(f"manifest {uri} is not UTF-8 text: {exc.reason}") from exc
    if text.startswith("["):
        try:
            entries = json.loads(text)
        except ValueError as exc:
            raise StorageError(f"manifest {uri} is not a valid JSON array: {exc}") from exc
        keys = [e.get("key") if isinstance(e, dict) else e for e in entries]
    else:
        keys = [line.strip() for line in text.splitlines() if line.strip()]
    good: list[str] = []
    for key in keys:
        if not isinstance(key, str) or not key:
            raise StorageError(
                f"manifest {uri} lists {key!r}, which is not an object key. Fix: list keys as "
                "strings (a JSON array, or one per line)."
            )
        good.append(key)
    return good
