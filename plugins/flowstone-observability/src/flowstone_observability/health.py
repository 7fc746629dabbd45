"""``check()``: is everything a FlowStone deployment depends on working right now?

One :class:`Check` per dependency and pipeline: the run store answers, its schema
migrations are current, the broker answers, workers reply to a ping (and say which
pipelines they serve), the daemon or sweeper wrote a fresh heartbeat, and the pipeline's
built resources are healthy. ``flowstone health``, ``flowstone metrics health`` and
``/healthz`` all print :meth:`HealthReport.to_json`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from flowstone_observability.heartbeat import HEARTBEAT_ROLES, read_heartbeats

__all__ = ["DEFAULT_HEARTBEAT_MAX_AGE", "Check", "HealthReport", "check"]

log = logging.getLogger("flowstone.observability")

DEFAULT_HEARTBEAT_MAX_AGE: Final = 120.0
"""Seconds after which a daemon or sweeper heartbeat counts as stale."""
PING_TIMEOUT: Final = 1.0
_PASSWORD: Final = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


@dataclass(frozen=True, slots=True)
class Check:
    """One dependency's state.

    Attributes:
        name: ``store``, ``migrations``, ``broker``, ``workers``, ``heartbeat`` or
            ``resources``.
        pipeline: the pipeline it was checked for.
        ok: whether it is healthy (a check that does not apply is ok).
        detail: what was found, or what is wrong and how to fix it.
        data: structured details (e.g. the workers and the pipelines they serve).
    """

    name: str
    pipeline: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pipeline": self.pipeline, "ok": self.ok,
                "detail": self.detail, **({"data": self.data} if self.data else {})}


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Every check; ``ok`` only if all are ok.

    ``core`` keeps each pipeline's own ``Pipeline.health()`` report (store, executor,
    resources): for one pipeline its keys also appear at the top of :meth:`to_json`, so
    ``flowstone health --json`` keeps the fields it had without this plugin.
    """

    checks: tuple[Check, ...]
    at: datetime
    core: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        top = next(iter(self.core.values())) if len(self.core) == 1 else {}
        return {**top, "ok": self.ok, "at": self.at.isoformat(),
                "checks": [c.to_json() for c in self.checks],
                "pipelines": {name: dict(report) for name, report in self.core.items()}}

    def to_text(self) -> str:
        lines = [f"{'ok  ' if c.ok else 'FAIL'} {c.pipeline} {c.name}: {c.detail}"
                 for c in self.checks]
        lines.append("healthy" if self.ok else "UNHEALTHY")
        return "\n".join(lines)


def check(
    pipelines: Sequence[Any],
    *,
    heartbeat_max_age: float = DEFAULT_HEARTBEAT_MAX_AGE,
    now: datetime | None = None,
) -> HealthReport:
    """Check every dependency of ``pipelines`` (see the module docstring).

    Never raises for a failing dependency: it is a failing :class:`Check` whose detail
    names what failed (passwords masked) and how to fix it.
    """
    at = now or datetime.now(UTC)
    checks: list[Check] = []
    pings: dict[int, tuple[Check, Check]] = {}  # one broker/worker ping per Celery app
    core: dict[str, dict[str, Any]] = {}
    for p in pipelines:
        core[p.name] = _core(p)
        store_ok = _guard(checks, p, "store", _store)
        _guard(checks, p, "migrations", _migrations)
        executor = p.executor
        if getattr(executor, "blocking", True):
            detail = f"the {getattr(executor, 'name', 'in-process')} executor runs steps here"
            checks.append(Check("broker", p.name, True, f"not used: {detail}"))
            checks.append(Check("workers", p.name, True, f"not used: {detail}"))
        elif not type(executor).__module__.startswith("flowstone_celery"):
            checks.extend(_executor_checks(p.name, core[p.name].get("executor")))
        else:
            key = id(getattr(executor, "app", executor))
            if key not in pings:
                pings[key] = _celery(p)
            broker, workers = pings[key]
            checks.append(Check("broker", p.name, broker.ok, broker.detail))
            checks.append(_serving(p.name, workers))
        if store_ok:
            _guard(checks, p, "heartbeat", lambda q: _heartbeat(q, at, heartbeat_max_age))
        else:
            checks.append(Check("heartbeat", p.name, False, "unknown: the store is unreachable"))
        _guard(checks, p, "resources", _resources)
    return HealthReport(tuple(checks), at, core)


def _core(p: Any) -> dict[str, Any]:
    """The pipeline's own ``health()`` report (never raises)."""
    try:
        report = p.health()
    except Exception as exc:
        return {"ok": False, "error": _mask(f"{type(exc).__name__}: {exc}")}
    return {k: (_mask(v) if isinstance(v, str) else v) for k, v in dict(report).items()}


def _executor_checks(pipeline: str, report: Any) -> list[Check]:
    """broker and workers of another queue-based executor, from its own ``health()``."""
    data = dict(report) if isinstance(report, dict) else {"executor": report}
    broker = data.get("broker", "ok")
    workers = data.get("workers")
    broker_ok = broker == "ok"
    workers_ok = bool(data.get("ok", report == "ok")) and broker_ok
    return [
        Check("broker", pipeline, broker_ok, str(broker) if not broker_ok else "answers", data),
        Check("workers", pipeline, workers_ok,
              f"executor reports {workers!r} worker(s)" if workers is not None else
              f"executor reports {data}", data),
    ]


def _mask(text: str) -> str:
    return _PASSWORD.sub(r"\1***@", text)


def _guard(checks: list[Check], pipeline: Any, name: str, run: Callable[[Any], Check]) -> bool:
    try:
        result = run(pipeline)
    except Exception as exc:
        result = Check(name, pipeline.name, False, _mask(f"{type(exc).__name__}: {exc}"))
    checks.append(result)
    return result.ok


def _store(p: Any) -> Check:
    p.store.ping()
    return Check("store", p.name, True, f"{type(p.store).__name__} answers")


def _migrations(p: Any) -> Check:
    store = p.store
    module = type(store).__module__
    if module.startswith("flowstone_io_postgres"):
        return _postgres_revision(p)
    if module.startswith("flowstone.defaults.sqlite"):
        return Check("migrations", p.name, True,
                     "SQLite schema is migrated when the store opens")
    return Check("migrations", p.name, True, f"not applicable to {type(store).__name__}")


def _postgres_revision(p: Any) -> Check:
    import asyncpg

    from flowstone_io_postgres import migrate
    from flowstone_io_postgres.urls import resolve_url

    url = resolve_url(p.store_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = str(getattr(p.store, "schema", "flowstone"))

    async def read() -> str | None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return await migrate.current_revision(conn, schema)
        finally:
            await conn.close()

    revision = asyncio.run(read())
    head = migrate.HEAD_REVISION
    data = {"schema": schema, "revision": revision, "head": head}
    if revision == head:
        return Check("migrations", p.name, True, f"schema {schema!r} at revision {head}", data)
    state = "does not exist" if revision is None else f"is at revision {revision}"
    return Check("migrations", p.name, False,
                 f"schema {schema!r} {state}, this release needs {head}: run "
                 "`flowstone db upgrade`", data)


def _celery(p: Any) -> tuple[Check, Check]:
    """(broker, workers) for a Celery-executed pipeline: one connection, one ping."""
    app = p.executor.app
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=PING_TIMEOUT)
    except Exception as exc:
        detail = _mask(f"unreachable ({type(exc).__name__}: {exc}); check "
                       "FLOWSTONE_BROKER_URL and that the broker runs")
        return (Check("broker", p.name, False, detail),
                Check("workers", p.name, False, "unknown: the broker is unreachable"))
    broker = Check("broker", p.name, True, "answers")
    try:
        replies = app.control.ping(timeout=PING_TIMEOUT) or []
        served = app.control.broadcast("flowstone_pipelines", reply=True,
                                       timeout=PING_TIMEOUT) or []
    except Exception as exc:
        return broker, Check("workers", p.name, False,
                             _mask(f"ping failed: {type(exc).__name__}: {exc}"))
    pipelines: dict[str, list[str] | None] = {}
    for reply in replies:
        for host in reply:
            pipelines[host] = None
    for reply in served:
        for host, answer in reply.items():
            names = answer.get("pipelines") if isinstance(answer, dict) else None
            if isinstance(names, list):
                pipelines[host] = sorted(str(n) for n in names)
    workers = [{"name": host, "pipelines": names} for host, names in sorted(pipelines.items())]
    return broker, Check("workers", p.name, bool(workers), "", {"workers": workers})


def _serving(pipeline: str, found: Check) -> Check:
    workers = found.data.get("workers")
    if not isinstance(workers, list):
        return Check("workers", pipeline, False, found.detail)
    serving = [w["name"] for w in workers if w["pipelines"] is None or pipeline in w["pipelines"]]
    data = {"workers": workers, "serving": serving}
    if serving:
        return Check("workers", pipeline, True,
                     f"{len(serving)} worker(s) serve it: {', '.join(serving)}", data)
    if workers:
        return Check("workers", pipeline, False,
                     f"{len(workers)} worker(s) reply but none serves pipeline {pipeline!r}: "
                     "start one with `flowstone worker --pipeline ...`", data)
    return Check("workers", pipeline, False,
                 "no worker replied to a ping within 1s: start one with `flowstone worker "
                 "--pipeline ...` on this broker and queue", data)


def _heartbeat(p: Any, now: datetime, max_age: float) -> Check:
    beats = read_heartbeats(p.store, p.name)
    needed = not getattr(p.executor, "blocking", True) or bool(p.schedules or p.sensors)
    data = {role: at.isoformat() for role, at in beats.items()}
    if not beats:
        if not needed:
            return Check("heartbeat", p.name, True,
                         "not required: in-process executor, no schedules or sensors")
        return Check("heartbeat", p.name, False,
                     "no daemon or sweeper heartbeat was ever written: run `flowstone daemon "
                     "--metrics-port ...` or a `flowstone worker` with its sweeper", data)
    role, newest = max(beats.items(), key=lambda kv: kv[1])
    age = (now - newest).total_seconds()
    if age <= max_age:
        return Check("heartbeat", p.name, True, f"{role} {age:.0f}s ago", data)
    return Check("heartbeat", p.name, not needed,
                 f"newest heartbeat ({role}) is {age:.0f}s old (limit {max_age:g}s): is the "
                 f"{' or '.join(HEARTBEAT_ROLES)} running?", data)


def _resources(p: Any) -> Check:
    report = p.resources.health()
    bad = {k: v for k, v in report.items() if v not in ("ok", "not built")}
    if bad:
        return Check("resources", p.name, False,
                     "; ".join(f"{k}: {v}" for k, v in sorted(bad.items())), dict(report))
    return Check("resources", p.name, True,
                 f"{len(report)} resource(s) fine" if report else "none declared", dict(report))
