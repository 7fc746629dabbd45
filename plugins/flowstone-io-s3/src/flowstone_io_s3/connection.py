"""Where the S3 and DynamoDB calls go, and what their failures mean to a user.

:class:`Connection` holds the endpoint, region and (optionally) a ready boto3 client or
session. Credentials come only from boto3's own chain (environment, shared config, instance
role...) or from the client/session you pass in; FlowStone never reads, stores or logs them.

Clients are created lazily, once per process: a worker that forks after loading the pipeline
gets its own connection pool instead of sharing sockets with its parent. boto3 clients are
thread-safe once created, so one client serves all threads of a process.

:func:`service_error` turns a botocore failure into a :class:`~flowstone.errors.StorageError`
that names the operation, the bucket/key (or table) and the endpoint, with a fix.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from flowstone.errors import StorageError, UsageError, ValueNotFoundError

__all__ = ["Connection", "service_error"]

# The IAM action each operation needs, for "access denied" messages.
_ACTIONS = {
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "DeleteObject": "s3:DeleteObject",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "Query": "dynamodb:Query",
    "Scan": "dynamodb:Scan",
}
_DENIED = frozenset(
    {"AccessDenied", "AccessDeniedException", "AllAccessDisabled", "403", "Forbidden"}
)
_MISSING_BUCKET = frozenset({"NoSuchBucket"})
_MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})


@dataclass(slots=True)
class Connection:
    """Endpoint settings and the lazily created boto3 client of one service.

    Args:
        service: ``"s3"`` or ``"dynamodb"``.
        endpoint_url: an S3-compatible server (MinIO, moto, Ceph...); None uses AWS (or
            boto3's own ``AWS_ENDPOINT_URL`` setting).
        region_name: the region; None uses boto3's configuration.
        client: a ready boto3 client to use as is (endpoint and region are then ignored).
        session: a ``boto3.Session`` to create the client from (its credentials are used).
        max_pool_connections: HTTP connections the client keeps per process.
        max_attempts: attempts per call in botocore's "standard" retry mode.
    """

    service: str
    endpoint_url: str | None = None
    region_name: str | None = None
    client: Any = None
    session: Any = None
    max_pool_connections: int = 16
    max_attempts: int = 3
    _made: Any = field(default=None, init=False, repr=False)
    _pid: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and (
            not isinstance(self.endpoint_url, str)
            or not self.endpoint_url.startswith(("http://", "https://"))
        ):
            raise UsageError(
                f"endpoint_url={self.endpoint_url!r} is not an http(s) URL. Fix: pass e.g. "
                "'http://127.0.0.1:9000', or None for AWS."
            )
        for name in ("max_pool_connections", "max_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an int >= 1, got {value!r}.")

    def __copy__(self) -> Connection:
        return Connection(
            self.service,
            self.endpoint_url,
            self.region_name,
            self.client,
            self.session,
            self.max_pool_connections,
            self.max_attempts,
        )

    def get(self) -> Any:
        """The boto3 client of this process (created on first use)."""
        if self.client is not None:
            return self.client
        pid = os.getpid()
        made = self._made
        if made is not None and self._pid == pid:
            return made
        with self._lock:
            if self._made is None or self._pid != pid:
                self._made = self._create()
                self._pid = pid
            return self._made

    def where(self) -> str:
        """The endpoint calls go to, for error messages."""
        client = self.client if self.client is not None else self._made
        if client is not None:
            return str(client.meta.endpoint_url)
        return self.endpoint_url or f"the default {self.service} endpoint"

    def _create(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            max_pool_connections=self.max_pool_connections,
            retries={"mode": "standard", "max_attempts": self.max_attempts},
        )
        factory = self.session if self.session is not None else boto3.session.Session()
        return factory.client(
            self.service,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            config=config,
        )


def error_code(exc: BaseException) -> str:
    """The service error code of a botocore ``ClientError`` ("" for other errors)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    code = response.get("Error", {}).get("Code")
    if code:
        return str(code)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(status) if status else ""


def service_error(
    exc: BaseException, *, operation: str, target: str, connection: Connection
) -> StorageError:
    """Translate a botocore error into a FlowStone error naming what failed and the fix.

    Args:
        exc: what botocore raised.
        operation: the API call (``"GetObject"``...), named in access-denied errors.
        target: ``s3://bucket/key`` or ``dynamodb table 'name'``.
        connection: where the call went.

    Returns:
        :class:`ValueNotFoundError` for a missing key, else :class:`StorageError`.
    """
    where = connection.where()
    code = error_code(exc)
    if code in _DENIED:
        action = _ACTIONS.get(operation, operation)
        return StorageError(
            f"access denied: {operation} on {target} (endpoint {where}). Fix: allow "
            f"{action} on it for the credentials boto3 uses (see docs/s3.md, IAM permissions)."
        )
    if code in _MISSING_BUCKET:
        bucket = target.removeprefix("s3://").split("/", 1)[0]
        return StorageError(
            f"bucket {bucket!r} does not exist at endpoint {where} ({operation} on {target}). "
            "Fix: create the bucket, or check bucket= and endpoint_url=."
        )
    if code in ("ResourceNotFoundException",):
        return StorageError(
            f"{target} does not exist at endpoint {where} ({operation}). Fix: create it, or "
            "check the table name, region and endpoint_url=."
        )
    if code in _MISSING_KEY:
        return ValueNotFoundError(f"no object at {target} (endpoint {where}, {operation}).")
    if code:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return StorageError(
            f"{operation} on {target} failed at endpoint {where}: {code} {message}".rstrip()
        )
    return StorageError(
        f"{operation} on {target} failed: cannot talk to endpoint {where} "
        f"({type(exc).__name__}: {exc}). Fix: check endpoint_url= / region and that the "
        "server is reachable, and that boto3 finds credentials."
    )
