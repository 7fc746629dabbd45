"""S3IOManager: asset values as objects in one bucket, under one prefix."""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flowstone.errors import StorageError, UnsafeKeyError, UsageError, ValueNotFoundError
from flowstone.protocols import StorageKey
from flowstone_io_s3 import values
from flowstone_io_s3.connection import Connection, error_code, service_error
from flowstone_io_s3.keys import check_prefix, object_name, parse_location
from flowstone_io_s3.values import ValueFormat

__all__ = ["BUCKET_ENV", "ObjectInfo", "S3IOManager"]

BUCKET_ENV = "FLOWSTONE_S3_BUCKET"
"""The environment variable naming the bucket when ``bucket`` is not given."""

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What S3 says about a stored value (see :meth:`S3IOManager.describe`)."""

    location: str
    size: int
    etag: str
    format: str


class S3IOManager:
    """Stores each asset value as one S3 object; the location is its ``s3://`` URI.

    Keys: ``<prefix>/<pipeline>/<asset>/<partition>/<run_id>/<attempt>[.item-N].<ext>``
    (see :mod:`flowstone_io_s3.keys`): every attempt of a step writes its own object, so a
    losing duplicate attempt never replaces the value a committed record points to, and a
    name that would escape the prefix raises :class:`~flowstone.errors.UnsafeKeyError`.

    Formats (see :mod:`flowstone_io_s3.values`): bytes raw, ``pyarrow.Table`` and pandas
    DataFrames as Parquet, everything else as the core's lossless JSON; ``formats`` (or the
    asset's ``metadata={"format": ...}``) chooses per asset: ``"parquet"`` stores a list of
    dicts as Parquet. Nothing is pickled. A value of ``multipart_threshold`` bytes or more
    is uploaded in parts of ``part_size`` bytes, ``concurrency`` at a time; a failed upload
    is aborted, so a store either writes the whole object or nothing. Every object is stored
    with a CRC32 of its whole content (for parts too: S3's ``FULL_OBJECT`` checksum type),
    and every load asks for it and checks the bytes it read against it: a value damaged at
    rest or in transit raises :class:`~flowstone.errors.StorageError` naming the object,
    and nothing is loaded. :meth:`load_many`
    loads several values concurrently (``BatchLoading``), and :meth:`store_described`
    reports size, ETag and format of what it wrote (``DescribedStorage``: the engine
    records them in the materialization).

    Args:
        bucket: the bucket; None reads ``FLOWSTONE_S3_BUCKET`` (at construction).
        prefix: key prefix all values live under.
        endpoint_url: an S3-compatible server; None for AWS (or boto3's own settings).
        region_name: the region; None uses boto3's configuration.
        name: the name the manager is registered under.
        formats: asset name -> ``"auto"``, ``"json"``, ``"bin"`` or ``"parquet"``; an asset
            not named here may declare its own, ``@asset(metadata={"format": "parquet"})``.
        default_format: the format of assets that choose none.
        parquet_compression: Parquet codec (``"zstd"``, ``"snappy"``, ``"none"``...).
        multipart_threshold: values at least this many bytes go up in parts (>= 5 MiB;
            default 128 MiB: below it one PUT was as fast or faster in our measurements,
            see docs/s3.md; lower it for more parallel bandwidth to AWS).
        part_size: bytes per part (>= 5 MiB, S3's minimum).
        concurrency: parallel part uploads and parallel loads in :meth:`load_many`.
        client: a ready boto3 S3 client (endpoint/region then ignored).
        session: a ``boto3.Session`` to create the client from.

    Raises:
        UsageError: no bucket, or a bad prefix, format or size.

    Example::

        io = S3IOManager(bucket="analytics", prefix="flowstone", formats={"orders": "parquet"})
    """

    def __init__(
        self,
        bucket: str | None = None,
        *,
        prefix: str = "flowstone",
        endpoint_url: str | None = None,
        region_name: str | None = None,
        name: str = "s3",
        formats: Mapping[str, ValueFormat] | None = None,
        default_format: ValueFormat = "auto",
        parquet_compression: str = "zstd",
        multipart_threshold: int = 128 * _MIB,
        part_size: int = 16 * _MIB,
        concurrency: int = 8,
        client: Any = None,
        session: Any = None,
    ) -> None:
        bucket = bucket if bucket is not None else os.environ.get(BUCKET_ENV, "")
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise UsageError(
                f"S3IOManager needs a bucket name, got {bucket!r}. Fix: pass bucket='name' or "
                f"set {BUCKET_ENV}."
            )
        for label, size in (("multipart_threshold", multipart_threshold), ("part_size", part_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 5 * _MIB:
                raise UsageError(f"{label} must be an int of at least 5 MiB, got {size!r}.")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError(f"concurrency must be an int >= 1, got {concurrency!r}.")
        self.name = name
        self.bucket = bucket
        self.prefix = check_prefix(prefix)
        self._formats = {
            str(asset): values.check_format(f, f"S3IOManager formats[{asset!r}]")
            for asset, f in (formats or {}).items()
        }
        self._default = values.check_format(default_format, "S3IOManager default_format")
        self._compression = parquet_compression
        self._threshold = multipart_threshold
        self._part_size = part_size
        self._concurrency = concurrency
        self._s3 = Connection(
            "s3", endpoint_url, region_name, client, session, max(16, 2 * concurrency)
        )
        self._checked_pid = 0
        self._check_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3IOManager(bucket={self.bucket!r}, prefix={self.prefix!r}, name={self.name!r})"

    # --- the IOManager protocol -----------------------------------------------------------
    def store(self, key: StorageKey, value: object) -> str:
        """Write ``value`` as one object and return its ``s3://bucket/key`` location.

        Raises:
            EncodingError: the value cannot be stored in its format; nothing is written.
            UnsafeKeyError: a name part would escape the prefix.
            UsageError: the asset's ``metadata["format"]`` is not a format.
            StorageError: S3 refused the write (names operation, object and endpoint).
        """
        return self.store_described(key, value)[0]

    def store_described(self, key: StorageKey, value: object) -> tuple[str, dict[str, Any]]:
        """:meth:`store`, also returning ``{"size", "etag", "format"}`` of the object
        written (``DescribedStorage``: the engine records them in the materialization's
        metadata under ``"value"``, with no extra request)."""
        fmt = self._format_of(key)
        ext, data = values.encode(value, asset=key.asset, fmt=fmt, compression=self._compression)
        object_key = object_name(self.prefix, key, key.attempt, ext)
        self._check_bucket()
        if len(data) >= self._threshold:
            response = self._upload_parts(object_key, data)
        else:
            # CRC32 explicitly: S3 keeps it with the object whatever the client's
            # request_checksum_calculation setting (botocore computes it as it sends).
            response = self._call(
                "PutObject", object_key, Key=object_key, Body=data, ChecksumAlgorithm="CRC32"
            )
        etag = str(response.get("ETag", "")).strip('"')
        return self._uri(object_key), {"size": len(data), "etag": etag, "format": ext}

    def load(self, location: str) -> object:
        """Return the value at ``location`` (as :meth:`store` returned it).

        The bytes read are checked against the CRC32 S3 stored with the object (botocore
        does it as it reads, asked by ``ChecksumMode``, whatever the client's
        ``response_checksum_validation`` setting). An object stored without a whole-object
        checksum (by another writer, or in parts before this manager stored one) is read
        unchecked.

        Raises:
            UnsafeKeyError: ``location`` is not a value of this manager's bucket and prefix.
            ValueNotFoundError: no object there.
            StorageError: S3 failed, the bytes read do not match the object's checksum, or
                the object is corrupt (names the object).
        """
        object_key, ext = self._parse(location)
        response = self._call(
            "GetObject", object_key, Key=object_key, ChecksumMode="ENABLED", missing=location
        )
        body = response["Body"]
        try:
            data = body.read()
        except Exception as exc:
            from botocore.exceptions import FlexibleChecksumError

            if isinstance(exc, FlexibleChecksumError):
                raise StorageError(
                    f"{location}: the bytes read do not match the CRC32 checksum S3 stored "
                    f"with the object ({exc}); nothing was loaded. The object or its transfer "
                    "is damaged. Fix: retry the step; if it fails again, the stored object is "
                    "corrupt: re-materialize the asset."
                ) from exc
            raise service_error(
                exc, operation="GetObject", target=location, connection=self._s3
            ) from exc
        finally:
            body.close()
        return values.decode(ext, data, location=location)

    def load_many(self, locations: Sequence[str]) -> list[object]:
        """Load several values concurrently (``concurrency`` GETs at a time), in order.

        Raises:
            ValueNotFoundError: one is missing (names it); as :meth:`load` otherwise.
        """
        for location in locations:
            self._parse(location)  # refuse a bad location before any request
        if len(locations) < 2:
            return [self.load(location) for location in locations]
        unique = list(dict.fromkeys(locations))
        with ThreadPoolExecutor(min(self._concurrency, len(unique))) as pool:
            loaded = dict(zip(unique, pool.map(self.load, unique), strict=True))
        return [loaded[location] for location in locations]

    def exists(self, location: str) -> bool:
        """Whether the object exists (one HEAD request)."""
        object_key, _ = self._parse(location)
        try:
            self._call("HeadObject", object_key, Key=object_key, missing=location)
        except ValueNotFoundError:
            return False
        return True

    def delete(self, location: str) -> None:
        """Delete the object; a missing object is not an error."""
        object_key, _ = self._parse(location)
        self._call("DeleteObject", object_key, Key=object_key)

    # --- extras ----------------------------------------------------------------------------
    def describe(self, location: str) -> ObjectInfo:
        """Size, ETag and format of a stored value (one HEAD request).

        Raises:
            ValueNotFoundError: no object there.
        """
        object_key, ext = self._parse(location)
        head = self._call("HeadObject", object_key, Key=object_key, missing=location)
        return ObjectInfo(location, int(head["ContentLength"]), str(head["ETag"]).strip('"'), ext)

    # --- helpers ---------------------------------------------------------------------------
    def _format_of(self, key: StorageKey) -> ValueFormat:
        """The asset's format: ``formats=`` of this manager, else the asset's own
        ``@asset(metadata={"format": ...})``, else ``default_format``."""
        if key.asset in self._formats:
            return self._formats[key.asset]
        declared = key.metadata.get("format") if key.metadata else None
        if declared is None:
            return self._default
        return values.check_format(declared, f"asset {key.asset!r} metadata")

    def _uri(self, object_key: str) -> str:
        return f"s3://{self.bucket}/{object_key}"

    def _parse(self, location: str) -> tuple[str, str]:
        head = f"s3://{self.bucket}/"
        if not isinstance(location, str) or not location.startswith(head):
            raise UnsafeKeyError(
                f"{location!r} is not a location of S3IOManager {self.name!r} (expected "
                f"'{head}{self.prefix}/...'). Pass the location store() returned, unchanged; "
                "a value of another bucket needs an IO manager configured for that bucket."
            )
        parsed = parse_location(self.prefix, location[len(head) :])
        return parsed.key, parsed.extension

    def _check_bucket(self) -> None:
        """Once per process, before the first write: a missing bucket or unreachable
        endpoint fails here, naming both (a HEAD refused for lack of s3:ListBucket is
        not an error: the write itself will tell)."""
        if self._checked_pid == os.getpid():
            return
        with self._check_lock:
            if self._checked_pid == os.getpid():
                return
            client = self._s3.get()
            try:
                client.head_bucket(Bucket=self.bucket)
            except Exception as exc:
                code = error_code(exc)
                if code in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(
                        f"bucket {self.bucket!r} does not exist at endpoint {self._s3.where()}. "
                        "Fix: create the bucket, or check bucket= and endpoint_url=."
                    ) from exc
                if code not in ("403", "AccessDenied", "Forbidden"):
                    raise service_error(
                        exc, operation="HeadBucket", target=f"s3://{self.bucket}",
                        connection=self._s3,
                    ) from exc  # fmt: skip
            self._checked_pid = os.getpid()

    def _call(self, operation: str, object_key: str, *, missing: str = "", **params: Any) -> Any:
        method = getattr(self._s3.get(), _METHODS[operation])
        try:
            return method(Bucket=self.bucket, **params)
        except Exception as exc:
            error = service_error(
                exc, operation=operation, target=self._uri(object_key), connection=self._s3
            )
            if isinstance(error, ValueNotFoundError):
                if not missing:
                    return None
                # A 404 for a HEAD cannot tell a missing key from a missing bucket.
                self._check_bucket()
                error = ValueNotFoundError(
                    f"no value at {missing!r} (endpoint {self._s3.where()}). It was deleted or "
                    "never written; re-materialize the asset."
                )
            raise error from exc

    def _upload_parts(self, object_key: str, data: bytes) -> Any:
        """Upload ``data`` in parts, each with its CRC32, and complete the object with the
        CRC32 of the whole (``FULL_OBJECT``): S3 checks it against the parts' checksums,
        and a GET of the object is then checked end to end, as a single PUT's is."""
        client = self._s3.get()
        upload = self._call(
            "CreateMultipartUpload", object_key, Key=object_key,
            ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT",
        )  # fmt: skip
        upload_id = upload["UploadId"]
        view = memoryview(data)
        starts = range(0, len(data), self._part_size)

        def put(number_start: tuple[int, int]) -> dict[str, Any]:
            number, start = number_start
            part = view[start : start + self._part_size]
            response = self._call(
                "UploadPart", object_key, Key=object_key, UploadId=upload_id,
                PartNumber=number, Body=part.tobytes(), ChecksumAlgorithm="CRC32",
            )  # fmt: skip
            done = {"PartNumber": number, "ETag": response["ETag"]}
            if "ChecksumCRC32" in response:  # S3 needs it back; not every server sends it
                done["ChecksumCRC32"] = response["ChecksumCRC32"]
            return done

        try:
            with ThreadPoolExecutor(min(self._concurrency, len(starts))) as pool:
                whole = pool.submit(_crc32, data)  # zlib releases the GIL: beside the uploads
                parts = list(pool.map(put, enumerate(starts, start=1)))
            return self._call(
                "CompleteMultipartUpload", object_key, Key=object_key, UploadId=upload_id,
                MultipartUpload={"Parts": parts}, ChecksumType="FULL_OBJECT",
                ChecksumCRC32=whole.result(),
            )  # fmt: skip
        except BaseException:
            # Nothing half-written: the parts are discarded and no object appears.
            with contextlib.suppress(Exception):  # the upload's own error is the one to report
                client.abort_multipart_upload(
                    Bucket=self.bucket, Key=object_key, UploadId=upload_id
                )
            raise


def _crc32(data: bytes) -> str:
    """The CRC32 of ``data`` as S3 writes it: base64 of the 4 big-endian bytes."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


_METHODS = {
    "PutObject": "put_object",
    "GetObject": "get_object",
    "HeadObject": "head_object",
    "DeleteObject": "delete_object",
    "CreateMultipartUpload": "create_multipart_upload",
    "UploadPart": "upload_part",
    "CompleteMultipartUpload": "complete_multipart_upload",
}
