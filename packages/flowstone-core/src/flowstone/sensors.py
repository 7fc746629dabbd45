"""Sensors: poll something outside, and request runs when it changed.

A sensor is a function the daemon calls every ``interval``. It gets a
:class:`SensorContext` (with a durable ``cursor`` it may advance) and returns run
requests. Each :class:`RunRequest` carries a ``run_key``: a key fires at most once, ever,
however often the sensor returns it and however many daemons evaluate the sensor.

Example:
    >>> from datetime import timedelta
    >>> @sensor(target="ingest", interval=timedelta(minutes=1))
    ... def new_files(context):
    ...     seen = context.cursor or ""
    ...     names = [n for n in ["a.csv", "b.csv"] if n > seen]
    ...     return SensorResult(
    ...         run_requests=[RunRequest(run_key=n, partition=n) for n in names],
    ...         cursor=max(names, default=seen or None),
    ...     )
    >>> new_files.name, new_files.interval
    ('new_files', datetime.timedelta(seconds=60))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import overload

from flowstone.errors import DefinitionError, UsageError
from flowstone.partitions import PartitionKey

__all__ = [
    "RunRequest",
    "Sensor",
    "SensorContext",
    "SensorFunction",
    "SensorResult",
    "SensorReturn",
    "sensor",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A run a sensor asks for.

    Args:
        run_key: de-duplication key: a key fires once per sensor, ever (e.g. a file name
            with its modification time).
        partition: the run's partition, or ``None`` for an unpartitioned run.
        targets: assets to materialize; ``None`` means the sensor's own target.
        tags: added to the run.
        force: recompute the targets even where a value for the partition exists (e.g. a
            sensor that sees an object overwritten with new content).

    Raises:
        UsageError: an empty ``run_key`` or malformed ``targets``/``tags``.
    """

    run_key: str
    partition: PartitionKey | None = None
    targets: Sequence[str] | None = None
    tags: Mapping[str, str] | None = field(default=None, hash=False)
    force: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.force, bool):
            raise UsageError(f"RunRequest force= must be True or False, got {self.force!r}")
        if not isinstance(self.run_key, str) or not self.run_key:
            raise UsageError(
                f"RunRequest run_key must be a non-empty string, got {self.run_key!r}; "
                "use something that identifies the change, e.g. f'{path}@{mtime}'"
            )
        if self.targets is not None:
            targets = (self.targets,) if isinstance(self.targets, str) else self.targets
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise UsageError(
                    f"RunRequest {self.run_key!r}: targets must be asset names, "
                    f"got {self.targets!r}"
                )
            object.__setattr__(self, "targets", tuple(targets))
        if self.tags is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise UsageError(f"RunRequest {self.run_key!r}: tags must map str to str")


@dataclass(frozen=True, slots=True)
class SensorResult:
    """Run requests plus the cursor to store once they have been claimed.

    ``cursor=None`` leaves the stored cursor unchanged.
    """

    run_requests: Sequence[RunRequest] = ()
    cursor: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_requests", tuple(self.run_requests))
        if self.cursor is not None and not isinstance(self.cursor, str):
            raise UsageError(
                f"SensorResult cursor must be a string or None, got {type(self.cursor).__name__};"
                " encode structured state with json.dumps"
            )


@dataclass(frozen=True, slots=True)
class SensorContext:
    """What a sensor function gets on each evaluation.

    Attributes:
        pipeline: the pipeline's name.
        sensor: the sensor's name.
        now: the daemon tick's time (aware).
        cursor: the durable cursor the sensor last returned, ``None`` at first.
        last_tick: when the sensor was last evaluated, ``None`` at first.
    """

    pipeline: str
    sensor: str
    now: datetime
    cursor: str | None = None
    last_tick: datetime | None = None


SensorReturn = Iterable[RunRequest] | SensorResult | None
SensorFunction = Callable[[SensorContext], SensorReturn]


@dataclass(frozen=True, slots=True)
class Sensor:
    """Call ``fn`` every ``interval``; start a run for each new ``run_key`` it returns.

    Args:
        name: identifier-like name, unique within the pipeline.
        fn: ``fn(context: SensorContext)`` returning run requests (any iterable, a
            generator works), a :class:`SensorResult`, or ``None``.
        target: asset(s) a request without ``targets`` runs; ``None`` requires every
            request to name its targets.
        interval: minimum time between evaluations (default 30 seconds).
        tags: added to every run the sensor starts.

    Raises:
        DefinitionError: a bad name, function, target or interval.
    """

    name: str
    fn: SensorFunction
    target: str | Sequence[str] | None = None
    interval: timedelta = timedelta(seconds=30)
    tags: Mapping[str, str] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise DefinitionError(
                f"invalid sensor name {self.name!r}: use letters, digits, '_', '.' or '-', "
                "starting with a letter or '_' (at most 128 characters), e.g. 'new_files'"
            )
        where = f"sensor {self.name!r}"
        if not callable(self.fn):
            raise DefinitionError(f"{where}: fn must be callable as fn(context), got {self.fn!r}")
        if self.target is not None:
            targets = (self.target,) if isinstance(self.target, str) else self.target
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise DefinitionError(
                    f"{where}: target must be an asset name or a list of asset names, "
                    f"got {self.target!r}"
                )
            object.__setattr__(self, "target", tuple(targets))
        if not isinstance(self.interval, timedelta) or self.interval <= timedelta(0):
            raise DefinitionError(
                f"{where}: interval must be a positive timedelta, e.g. timedelta(seconds=30); "
                f"got {self.interval!r}"
            )
        if self.tags is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise DefinitionError(f"{where}: tags must map str to str, got {self.tags!r}")

    @property
    def targets(self) -> tuple[str, ...] | None:
        """The default targets as a tuple, or ``None``."""
        return None if self.target is None else tuple(self.target)

    def evaluate(self, context: SensorContext) -> SensorResult:
        """Call the function and normalize what it returned.

        Raises:
            UsageError: the function returned something other than run requests.
            Exception: whatever the function raised, unchanged.
        """
        returned = self.fn(context)
        if returned is None:
            return SensorResult()
        if isinstance(returned, SensorResult):
            result = returned
        elif isinstance(returned, RunRequest | str | bytes | Mapping) or not isinstance(
            returned, Iterable
        ):
            raise UsageError(
                f"sensor {self.name!r} returned {type(returned).__name__}; return a list of "
                "RunRequest, a SensorResult, or None"
            )
        else:
            result = SensorResult(run_requests=tuple(returned))
        for request in result.run_requests:
            if not isinstance(request, RunRequest):
                raise UsageError(
                    f"sensor {self.name!r} returned {request!r} among its run requests; "
                    "use RunRequest(run_key=..., partition=...)"
                )
        return result


@overload
def sensor(fn: SensorFunction, /) -> Sensor: ...


@overload
def sensor(
    *,
    target: str | Sequence[str] | None = None,
    interval: timedelta = ...,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Callable[[SensorFunction], Sensor]: ...


def sensor(
    fn: SensorFunction | None = None,
    /,
    *,
    target: str | Sequence[str] | None = None,
    interval: timedelta = timedelta(seconds=30),
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Sensor | Callable[[SensorFunction], Sensor]:
    """Turn a function into a :class:`Sensor` named after it; bare or called.

    Example:
        >>> @sensor
        ... def ping(context):
        ...     return [RunRequest(run_key="once", targets=["report"])]
        >>> ping.name
        'ping'
    """

    def build(function: SensorFunction) -> Sensor:
        return Sensor(
            name or str(getattr(function, "__name__", "")),
            function,
            target,
            interval=interval,
            tags=tags,
        )

    if fn is not None:
        return build(fn)
    return build
