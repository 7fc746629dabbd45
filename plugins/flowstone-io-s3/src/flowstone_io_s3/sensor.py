"""S3ArrivalSensor: one run per new (or overwritten) object under a prefix."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from flowstone.errors import UsageError
from flowstone.partitions import PartitionKey
from flowstone.sensors import RunRequest, Sensor, SensorContext, SensorResult
from flowstone_io_s3.connection import Connection, service_error

__all__ = ["S3ArrivalSensor", "s3_arrival_sensor"]

PartitionFromKey = Callable[[str], PartitionKey | None]


class S3ArrivalSensor:
    """The sensor function: lists a prefix and asks for one run per new object.

    Every new key gets its own run (at the first evaluation, every object already under
    the prefix counts as new), and so does an overwritten one: the run key is
    ``"<key>@<etag>"``, and FlowStone fires a run key once, ever, however many daemons or
    Celery sweepers evaluate the sensor. The partition of each run comes from the key
    through ``partition`` (e.g. ``lambda key: key.rsplit("/", 1)[-1].removesuffix(".csv")``);
    the run's tags carry ``s3_bucket``, ``s3_key`` and ``s3_etag``.

    The durable cursor keeps the newest ``LastModified`` seen and the ``key -> etag`` of
    objects modified within ``lookback`` of it; older objects are skipped without a store
    call. ``lookback`` covers uploads that finish after a newer object is listed (a
    multipart upload takes the time it *started*); keep it longer than your slowest upload.
    At most ``max_per_tick`` runs are requested per evaluation, oldest first; the rest come
    on the next ones.

    Each evaluation lists the whole prefix (S3 cannot list by time): give arrivals a
    prefix of their own and let a lifecycle rule expire processed objects.

    Args:
        bucket: the bucket.
        prefix: key prefix to watch.
        suffix: only keys ending so (e.g. ``".csv"``).
        partition: key -> partition of the run (None: unpartitioned runs).
        lookback: see above (default 15 minutes).
        max_per_tick: most runs requested per evaluation.
        force: each run recomputes its targets even where the partition has values (so
            an overwritten object is processed again); False reuses existing values.
        endpoint_url, region_name, client, session: as for ``S3IOManager``.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        suffix: str = "",
        partition: PartitionFromKey | None = None,
        lookback: timedelta = timedelta(minutes=15),
        max_per_tick: int = 1000,
        force: bool = True,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        client: Any = None,
        session: Any = None,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise UsageError(f"S3ArrivalSensor: bucket must be a bucket name, got {bucket!r}.")
        if not isinstance(prefix, str) or not isinstance(suffix, str):
            raise UsageError("S3ArrivalSensor: prefix and suffix must be strings.")
        if partition is not None and not callable(partition):
            raise UsageError(
                f"S3ArrivalSensor: partition must be callable as fn(key), got {partition!r}."
            )
        if not isinstance(lookback, timedelta) or lookback < timedelta(0):
            raise UsageError(
                f"S3ArrivalSensor: lookback must be a timedelta >= 0, got {lookback!r}."
            )
        if isinstance(max_per_tick, bool) or not isinstance(max_per_tick, int) or max_per_tick < 1:
            raise UsageError(
                f"S3ArrivalSensor: max_per_tick must be an int >= 1, got {max_per_tick!r}."
            )
        self.bucket = bucket
        self.prefix = prefix
        self.suffix = suffix
        self._partition = partition
        self._lookback = lookback
        self._max = max_per_tick
        if not isinstance(force, bool):
            raise UsageError(f"S3ArrivalSensor: force must be True or False, got {force!r}.")
        self._force = force
        self._connection = Connection("s3", endpoint_url, region_name, client, session)

    def __repr__(self) -> str:
        return f"S3ArrivalSensor(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def __call__(self, context: SensorContext) -> SensorResult:
        since, seen = _parse_cursor(context.cursor, context.sensor)
        listed = list(self._list())
        fresh = sorted(
            (o for o in listed if (since is None or o[2] >= since) and seen.get(o[0]) != o[1]),
            key=lambda o: (o[2], o[0]),
        )
        emitted, waiting = fresh[: self._max], fresh[self._max :]
        newest = max((o[2] for o in listed), default=since)
        if newest is None:
            return SensorResult(cursor=context.cursor)
        # Objects older than the horizon are skipped next time without comparing etags;
        # it never passes an object still waiting for a later evaluation.
        horizon = newest - self._lookback
        if waiting:
            horizon = min(horizon, waiting[0][2])
        if since is not None:
            horizon = max(horizon, since)
        done = {o[0] for o in emitted}
        cursor = {
            "since": horizon.isoformat(),
            "seen": {
                key: etag
                for key, etag, modified in sorted(listed)
                if modified >= horizon and (key in done or seen.get(key) == etag)
            },
        }
        return SensorResult(
            run_requests=[self._request(key, etag) for key, etag, _ in emitted],
            cursor=json.dumps(cursor, separators=(",", ":")),
        )

    def _request(self, key: str, etag: str) -> RunRequest:
        partition = self._partition(key) if self._partition is not None else None
        return RunRequest(
            run_key=f"{key}@{etag}",
            partition=partition,
            tags={"s3_bucket": self.bucket, "s3_key": key, "s3_etag": etag},
            force=self._force,
        )

    def _list(self) -> Sequence[tuple[str, str, datetime]]:
        client = self._connection.get()
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        out: list[tuple[str, str, datetime]] = []
        while True:
            try:
                page = client.list_objects_v2(**params)
            except Exception as exc:
                raise service_error(
                    exc, operation="ListObjectsV2", target=f"s3://{self.bucket}/{self.prefix}",
                    connection=self._connection,
                ) from exc  # fmt: skip
            for entry in page.get("Contents", ()):
                key = str(entry["Key"])
                if key.endswith(self.suffix):
                    out.append((key, str(entry["ETag"]).strip('"'), entry["LastModified"]))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return out
            params["ContinuationToken"] = token


def _parse_cursor(cursor: str | None, sensor: str) -> tuple[datetime | None, dict[str, str]]:
    if cursor is None:
        return None, {}
    try:
        data = json.loads(cursor)
        since = datetime.fromisoformat(data["since"])
        seen = data["seen"]
        if since.tzinfo is None or not isinstance(seen, dict):
            raise ValueError("malformed")
        return since, {str(k): str(v) for k, v in seen.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"sensor {sensor!r}: its stored cursor {cursor[:200]!r} is not an S3ArrivalSensor "
            "cursor. Fix: reset the sensor's cursor (another sensor used this name before)."
        ) from exc


def s3_arrival_sensor(
    name: str,
    *,
    bucket: str,
    target: str | Sequence[str] | None = None,
    interval: timedelta = timedelta(seconds=30),
    tags: Mapping[str, str] | None = None,
    **options: Any,
) -> Sensor:
    """A :class:`flowstone.sensors.Sensor` running an :class:`S3ArrivalSensor`.

    Args:
        name: the sensor's name (unique in the pipeline).
        bucket: the bucket to watch.
        target: asset(s) each run materializes.
        interval: time between evaluations.
        tags: added to every run.
        **options: the other :class:`S3ArrivalSensor` arguments (``prefix``, ``partition``...).

    Example::

        pipeline = fs.Pipeline("ingest", assets, sensors=[
            s3_arrival_sensor("new_exports", bucket="exports", prefix="incoming/",
                              suffix=".csv", target="load", partition=stem),
        ])
    """
    return Sensor(name, S3ArrivalSensor(bucket, **options), target, interval=interval, tags=tags)
