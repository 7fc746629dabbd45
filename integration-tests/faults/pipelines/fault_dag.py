"""The fault suite's pipeline: a 20-asset DAG whose user code audits every execution.

Shape (``summary`` depends on everything)::

    source ─┬─ left ──┐
            ├─ right ─┴─ diamond ──────────────────────────┐
            ├─ numbers ─┬─ squares (scatter, gather) ─ sq_total ─┤
            │           └─ batched (scatter read page by page, batches of 50) ─ b_total ─┤
            ├─ br_a, br_b, br_c ── joined (parallel, join) ──────────┴─ merge ─┐
            ├─ approved (approval) ─ after_approval ──────────────────────────┤
            └─ gated (signal gate) ─ after_gate ──────────────────────────────┴─ final ─ summary

The partition key is ``<name>-<N>``: both scatters run over ``N`` items. A worker started
with ``FLOWSTONE_FAULTS_ITEM_SLEEP=<seconds>`` makes each ``squares`` item take that long.

Every execution of user code (an asset, a scatter item or batch, the gather, the join,
``on_signal``, the observer's ``approval.decided`` hook) inserts one row into the audit
table ``public.fault_audit`` of the run store's database, on a connection of its own, and
returns (or stores) a value carrying that row's ``eid``. The table has no unique
constraint: a test counts how often user code really ran, apart from what FlowStone
recorded, and matches every recorded value to the execution that wrote it.

Each execution audits itself first, then passes its trap point, so an execution killed at
its trap is counted too.

Traps: a test arms ``$FLOWSTONE_IT_DIR/trap.<partition>.<point>`` (its text is the action);
the first execution reaching that point claims it (an atomic rename), writes its pid to
``$FLOWSTONE_IT_DIR/pid.<partition>.<point>`` and then acts: ``hold:<seconds>`` sleeps
(the test kills, stops or terminates the process meanwhile), ``pgkill`` terminates every
other connection to the run store's database, waits until the server has closed them,
and carries on.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import flowstone as fs
from flowstone.readers import JsonLines

AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS public.fault_audit (
    id        bigserial PRIMARY KEY,
    eid       text NOT NULL,
    run_id    text NOT NULL,
    asset     text NOT NULL,
    partition text NOT NULL,
    kind      text NOT NULL,
    attempt   integer,
    item      integer,
    pid       integer NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
)"""
TERMINATE_SQL = (
    "SELECT array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
GONE_SQL = "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = ANY($1::int[]))"
BATCH = 50


def _dir() -> Path:
    return Path(os.environ["FLOWSTONE_IT_DIR"])


def _url() -> str:
    return os.environ["FLOWSTONE_DATABASE_URL"].replace("+asyncpg", "")


class _Audit:
    """One asyncpg connection per process, on a loop thread of its own (user code is
    synchronous and may run in any thread). A connection lost to a fault is replaced and
    the insert retried; rows are told apart by ``eid``, so a retried insert that had
    committed is counted once (``count(DISTINCT eid)``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._url = ""

    def _ready(self) -> asyncio.AbstractEventLoop:
        if self._pid != os.getpid():  # first use, or a forked child: start afresh
            self._pid, self._conn = os.getpid(), None
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True,
                             name="fault-audit").start()
        assert self._loop is not None
        return self._loop

    def _call(self, sql: str, *args: Any) -> Any:
        import asyncpg

        async def go() -> Any:
            if self._conn is not None and (self._conn.is_closed() or self._url != _url()):
                conn, self._conn = self._conn, None
                conn.terminate()
            if self._conn is None:
                self._url = _url()
                self._conn = await asyncpg.connect(self._url, timeout=10)
            try:
                return await self._conn.fetchval(sql, *args, timeout=30)
            except BaseException:
                conn, self._conn = self._conn, None
                conn.terminate()
                raise

        with self._lock:
            loop = self._ready()
            for tries in range(20):
                try:
                    return asyncio.run_coroutine_threadsafe(go(), loop).result()
                except Exception:
                    if tries == 19:
                        raise
                    time.sleep(0.25)
        return None

    def write(self, run_id: str, asset: str, partition: str, kind: str,
              attempt: int | None = None, item: int | None = None) -> str:
        eid = uuid.uuid4().hex
        self._call(
            "INSERT INTO public.fault_audit (eid, run_id, asset, partition, kind, attempt, "
            "item, pid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            eid, run_id, asset, partition, kind, attempt, item, os.getpid())
        return eid

    def close(self) -> None:
        """Close this process's audit connection and stop its loop (if it has one)."""
        with self._lock:
            loop, self._loop, self._pid = self._loop, None, -1
            if loop is None:
                return
            if self._conn is not None:
                conn, self._conn = self._conn, None
                asyncio.run_coroutine_threadsafe(conn.close(timeout=5), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            while loop.is_running():
                time.sleep(0.01)
            loop.close()

    def terminate_all(self) -> int:
        """Terminate every other connection to the database and wait until their backends
        are gone, so the server has closed them before anyone uses them again."""
        pids = list(self._call(TERMINATE_SQL) or [])
        deadline = time.monotonic() + 10
        while pids and not self._call(GONE_SQL, pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(pids)


AUDIT = _Audit()


def trap(partition: str, point: str) -> None:
    """Act on an armed trap for ``point`` of this partition (once, first caller wins)."""
    armed = _dir() / f"trap.{partition}.{point}"
    claimed = _dir() / f"hit.{partition}.{point}"
    try:
        os.rename(armed, claimed)
    except FileNotFoundError:
        return
    action = claimed.read_text().strip()
    pid_file = _dir() / f"pid.{partition}.{point}"
    tmp = pid_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    os.rename(tmp, pid_file)
    if action.startswith("hold:"):
        time.sleep(float(action.split(":", 1)[1]))
    elif action == "pgkill":
        AUDIT.terminate_all()
    else:
        raise ValueError(f"unknown trap action {action!r} in {claimed}")


def size(partition: str) -> int:
    return int(partition.rsplit("-", 1)[1])


def _asset(context: fs.Context, v: Any, point: str | None = None) -> dict[str, Any]:
    """Audit one execution of an asset and return its value (``v`` plus who wrote it)."""
    partition = str(context.partition)
    eid = AUDIT.write(context.run_id, context.asset, partition, "asset", context.attempt)
    trap(partition, point or context.asset)
    return {"v": v, "eid": eid, "pid": os.getpid(), "attempt": context.attempt}


@fs.asset
def source(context: fs.Context) -> dict[str, Any]:
    return _asset(context, size(str(context.partition)))


@fs.asset
def left(context: fs.Context, source: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, source["v"] + 1)


@fs.asset
def right(context: fs.Context, source: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, source["v"] + 2)


@fs.asset
def diamond(context: fs.Context, left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, left["v"] + right["v"])


@fs.asset
def numbers(context: fs.Context, source: dict[str, Any]) -> dict[str, Any]:
    """The items: as a list (for ``squares``) and as a JSON-lines file of this attempt
    (read page by page by ``batched``)."""
    partition, items = str(context.partition), list(range(source["v"]))
    path = _dir() / f"items.{context.run_id}.{context.attempt}.jsonl"
    path.write_text("".join(f"{i}\n" for i in items))
    return {**_asset(context, items), "file": str(path), "partition": partition}


class PageTrap(JsonLines):
    """Reads ``numbers``'s file; its trap point ``page`` is the third page, after it was
    read and before it is stored with its checkpoint."""

    def __copy__(self) -> PageTrap:
        return PageTrap(self._path)

    def init(self, deps: Any) -> None:
        super().init(deps)
        self.partition, self.pages = str(deps["numbers"]["partition"]), 0

    def read(self, max_items: int) -> list[Any]:
        page = super().read(max_items)
        self.pages += 1
        if self.pages == 3:
            trap(self.partition, "page")
        return page


def gather_squares(results: list[Any]) -> dict[str, Any]:
    """The custom gather: item 0's result names the run and the partition."""
    run_id, partition = results[0][2], results[0][3]
    eid = AUDIT.write(run_id, "squares", partition, "gather")
    trap(partition, "gather")
    return {"v": sum(r[0] for r in results), "n": len(results), "eid": eid,
            "pid": os.getpid()}


@fs.asset(scatter=fs.Scatter(items=lambda numbers: numbers["v"], max_concurrent=200,
                             gather=gather_squares, options={"chunk_size": 10}))
def squares(context: fs.Context, numbers: dict[str, Any]) -> list[Any]:
    i: int = context.scatter_item
    partition = str(context.partition)
    eid = AUDIT.write(context.run_id, "squares", partition, "item", context.attempt, i)
    time.sleep(float(os.environ.get("FLOWSTONE_FAULTS_ITEM_SLEEP", "0")))
    if i == len(numbers["v"]) // 2:
        trap(partition, "item")
    return [i * i, eid, context.run_id, partition] if i == 0 else [i * i, eid]


@fs.asset(scatter=fs.Scatter(reader=PageTrap(lambda deps: deps["numbers"]["file"]),
                             page_size=2 * BATCH, max_concurrent=50,
                             batching=fs.Batching(max_items=BATCH)))
def batched(context: fs.Context, numbers: dict[str, Any]) -> list[list[Any]]:
    batch = context.batch
    assert batch is not None
    eid = AUDIT.write(context.run_id, "batched", str(context.partition), "batch",
                      context.attempt, batch.index)
    return [[3 * i, eid] for i in batch.items]


@fs.asset
def sq_total(context: fs.Context, squares: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, squares["v"])


@fs.asset
def b_total(context: fs.Context, batched: list[list[Any]]) -> dict[str, Any]:
    return _asset(context, sum(v for v, _ in batched))


@fs.asset
def br_a(context: fs.Context, source: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, source["v"] + 10)


@fs.asset
def br_b(context: fs.Context, source: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, source["v"] + 20)


@fs.asset
def br_c(context: fs.Context, source: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, source["v"] + 30)


@fs.asset(deps=["source"], parallel=fs.Parallel(branches={"a": "br_a", "b": "br_b",
                                                           "c": "br_c"}))
def joined(context: fs.Context, branches: dict[str, Any]) -> dict[str, Any]:
    """The join: audited as its own kind, so a test counts joins apart from assets."""
    partition = str(context.partition)
    eid = AUDIT.write(context.run_id, "joined", partition, "join", context.attempt)
    trap(partition, "join")
    return {"v": sum(b["v"] for b in branches.values()), "eid": eid, "pid": os.getpid(),
            "attempt": context.attempt}


@fs.asset
def approved(context: fs.Context, source: dict[str, Any]) -> Any:
    value = _asset(context, source["v"] * 7)
    return fs.WaitForApproval(f"approve {context.partition}?", value=value, timeout=600)


@fs.asset
def after_approval(context: fs.Context, approved: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, approved["v"])


def on_signal(context: fs.Context, payload: Any) -> dict[str, Any]:
    partition = str(context.partition)
    eid = AUDIT.write(context.run_id, "gated", partition, "signal", context.attempt)
    trap(partition, "signal")
    return {"v": int(payload["x"]), "eid": eid, "pid": os.getpid(), "attempt": context.attempt}


@fs.asset(on_signal=on_signal)
def gated(context: fs.Context, source: dict[str, Any]) -> Any:
    gate = context.signal_gate(timeout=600)
    _asset(context, None)
    token = _dir() / f"token.{context.run_id}"
    tmp = token.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(gate.token)
    os.rename(tmp, token)
    return gate


@fs.asset
def after_gate(context: fs.Context, gated: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, gated["v"])


@fs.asset
def merge(context: fs.Context, diamond: dict[str, Any], sq_total: dict[str, Any],
          b_total: dict[str, Any], joined: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, diamond["v"] + sq_total["v"] + b_total["v"] + joined["v"])


@fs.asset
def final(context: fs.Context, merge: dict[str, Any], after_approval: dict[str, Any],
          after_gate: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, merge["v"] + after_approval["v"] + after_gate["v"])


@fs.asset
def summary(context: fs.Context, final: dict[str, Any]) -> dict[str, Any]:
    return _asset(context, final["v"])


def expected_summary(n: int, signal_x: int) -> int:
    """What ``summary`` must hold for ``n`` items and the signal payload ``{"x": x}``."""
    diamond_v = (n + 1) + (n + 2)
    squares_v = sum(i * i for i in range(n))
    batched_v = 3 * n * (n - 1) // 2
    joined_v = 3 * n + 60
    return diamond_v + squares_v + batched_v + joined_v + 7 * n + signal_x


class Traps:
    """Observer: user code between the approval's decision and the resume of its step
    (``approval.decided``), and between storing a value and its ``finish_step``
    (``io.stored`` of ``merge``)."""

    def on_event(self, event: Any) -> None:
        if event.kind == "approval.decided":
            AUDIT.write(event.run_id, event.asset, event.partition, "approve")
            trap(event.partition, "approve")
        elif event.kind == "io.stored" and event.asset == "merge":
            trap(event.partition, "finish")


ASSETS = [source, left, right, diamond, numbers, squares, batched, sq_total, b_total, br_a,
          br_b, br_c, joined, approved, after_approval, gated, after_gate, merge, final,
          summary]


def make_pipeline() -> fs.Pipeline:
    """A new pipeline object, configured from the environment as it is now."""
    # the suite's short lease in every process, clients too: a client that dies resolving
    # a wait holds its claim for this long (workers get it from FLOWSTONE_LEASE_SECONDS)
    lease = float(os.environ.get("FLOWSTONE_FAULTS_LEASE", "5"))
    return fs.Pipeline("faults_dag", ASSETS, observers=[Traps()], lease_seconds=lease)


_built: list[fs.Pipeline] = []


def __getattr__(name: str) -> Any:
    """``pipeline``, built on first use: workers load it by its spec, while tests build
    their own with :func:`make_pipeline` (so importing this module opens nothing)."""
    if name == "pipeline":
        if not _built:
            _built.append(make_pipeline())
        return _built[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

if os.environ.get("FLOWSTONE_FAULTS_DUPLICATE"):
    from faults_it import publish_twice  # the suite's directory is on PYTHONPATH

    publish_twice()
