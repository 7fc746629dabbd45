"""S3 throughput: S3ItemReader and S3IOManager against plain boto3, same server, same run.

The server is moto in server mode, started as its own process on 127.0.0.1 (so it does not
share the measuring process's interpreter lock); everything goes through boto3 over HTTP.

* **JSON lines**: items/s reading a 1,000,000-row JSON-lines object with ``S3ItemReader``
  (pages of 1,000) vs a plain ``get_object()["Body"].iter_lines()`` + ``json.loads`` loop.
* **Parquet**: the same rows as Parquet (row groups of 65,536 rows), items/s and peak RSS
  of ``S3ItemReader`` (one row group in memory at a time) vs ``get_object`` +
  ``pyarrow.parquet.read_table`` of the whole object + ``to_pylist`` (the same Python dicts
  a scatter consumes); ``read_table`` alone is reported too. Both readers run once more on
  an object of half the rows: equal peak RSS means memory flat in object size.
* **IO manager**: ``S3IOManager.store``/``load`` of 1 MB and 100 MB ``bytes`` values vs
  ``put_object``/``get_object`` (defaults: one PUT below 128 MiB), and 100 MB once more
  forced into a multipart upload of 16 MiB parts. Both sides have their bytes checked:
  botocore validates the CRC32 S3 stored with a single PUT on ``get_object`` too.

Reader measurements run in a fresh child process each (peak RSS is per process; the
import and connection set-up are outside the timer). Rounds alternate which side goes
first; reader figures are medians. An IO ratio is the median of the rounds' own ratios
(each round times both sides back to back, so a load swing of the shared machine between
rounds does not land on one side); the per-round ratios and the median rates are reported
too. The load average before and after goes into the JSON. Progress goes to stderr; the
last line is ONE JSON line::

    python bench/s3_reader.py            # 3 rounds, 1,000,000 rows
    python bench/s3_reader.py --quick    # 1 round, 100,000 rows
    python bench/s3_reader.py --io-only  # only the IO manager rows
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

BUCKET = "flowstone-bench"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=16))


def _rss_mb() -> float:
    """Peak RSS of this process (VmHWM). Not ``ru_maxrss``: Linux carries that over from
    the parent across fork and exec, so a child would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- child measurements -------------------------------------------------------------------
def child(kind: str, endpoint: str, key: str) -> dict[str, Any]:
    """One measurement in this (fresh) process: items, seconds, peak RSS."""
    s3 = _client(endpoint)
    s3.head_object(Bucket=BUCKET, Key=key)  # connection and credentials set up untimed
    start_rss = _rss_mb()
    started = time.perf_counter()
    if kind == "boto3-iter-lines":
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
        items = sum(1 for line in body.iter_lines() if line and json.loads(line) is not None)
    elif kind in ("reader-jsonl", "reader-parquet"):
        from flowstone_io_s3 import S3ItemReader

        # The same client as the plain loops: what is timed is reading, not client set-up.
        reader = S3ItemReader(BUCKET, key=key, client=s3)
        reader.init({})
        items = 0
        while page := reader.read(1000):
            items += len(page)
        reader.close()
    elif kind in ("read-table", "read-table-to-pylist"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        table = pq.read_table(pa.BufferReader(data))
        items = len(table.to_pylist()) if kind == "read-table-to-pylist" else table.num_rows
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    seconds = time.perf_counter() - started
    return {"items": items, "seconds": seconds, "rss_mb": _rss_mb(), "start_rss_mb": start_rss}


def measure(kind: str, endpoint: str, key: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--endpoint", endpoint, "--key", key],
        capture_output=True, text=True, check=True, env={**os.environ, **CREDENTIALS},
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    speed = result["items"] / result["seconds"]
    log(f"  {kind:22s} {speed:>12,.0f} items/s  peak RSS {result['rss_mb']:7.1f} MB "
        f"(before reading {result['start_rss_mb']:.1f})")  # fmt: skip
    return result


# --- the server and the data --------------------------------------------------------------
def start_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("moto server did not start") from None
            time.sleep(0.2)


def upload_rows(s3: Any, rows: int, name: str = "rows") -> tuple[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def row(i: int) -> dict[str, Any]:
        return {"id": i, "name": f"user-{i}", "score": i * 0.5, "active": i % 3 == 0}

    lines = b"".join(json.dumps(row(i)).encode() + b"\n" for i in range(rows))
    s3.put_object(Bucket=BUCKET, Key=f"{name}.jsonl", Body=lines)
    log(f"JSON lines object: {rows:,} rows, {len(lines) / 1e6:.1f} MB")
    table = pa.Table.from_pylist([row(i) for i in range(rows)])
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=65536)
    s3.put_object(Bucket=BUCKET, Key=f"{name}.parquet", Body=sink.getvalue())
    log(f"Parquet object: {len(sink.getvalue()) / 1e6:.1f} MB, row groups of 65,536 rows")
    return f"{name}.jsonl", f"{name}.parquet"


def rate(results: list[dict[str, Any]]) -> float:
    return statistics.median(r["items"] / r["seconds"] for r in results)


# --- the IO manager -----------------------------------------------------------------------
def io_rounds(endpoint: str, s3: Any, size: int, rounds: int, **options: Any) -> dict[str, Any]:
    from flowstone.protocols import StorageKey
    from flowstone_io_s3 import S3IOManager

    manager = S3IOManager(BUCKET, prefix="bench-io", endpoint_url=endpoint, **options)
    payload = os.urandom(size)
    times: dict[str, list[float]] = {"store": [], "put": [], "load": [], "get": []}

    def timed(name: str, n: int, call: Any) -> Any:
        started = time.perf_counter()
        result = call()
        if n:  # round 0 warms connections up and is not counted
            times[name].append(time.perf_counter() - started)
        return result

    for n in range(rounds + 1):
        key = StorageKey("bench", f"value-{size}", "", uuid.uuid4().hex)
        plain_key = f"bench-plain/{uuid.uuid4().hex}"
        # Writes back to back, then reads back to back, each pair in alternating order: the
        # two sides of a ratio are timed within a fraction of a second of each other.
        location = ""
        for side in ("ours", "plain") if n % 2 == 0 else ("plain", "ours"):
            if side == "ours":
                location = timed("store", n, lambda: manager.store(key, payload))
            else:
                timed("put", n, lambda: s3.put_object(Bucket=BUCKET, Key=plain_key, Body=payload))
        for side in ("plain", "ours") if n % 2 == 0 else ("ours", "plain"):
            if side == "ours":
                assert timed("load", n, lambda: manager.load(location)) == payload
            else:
                body = timed(
                    "get", n, lambda: s3.get_object(Bucket=BUCKET, Key=plain_key)["Body"].read()
                )
                assert body == payload
        manager.delete(location)  # the server keeps memory flat between rounds
        s3.delete_object(Bucket=BUCKET, Key=plain_key)
    median = {name: statistics.median(values) for name, values in times.items()}
    # Each round's own ratio (plain time / ours), then their median.
    store_ratios = [put / store for put, store in zip(times["put"], times["store"], strict=True)]
    load_ratios = [get / load for get, load in zip(times["get"], times["load"], strict=True)]
    mb = size / 1e6
    log(f"  {mb:5.0f} MB  store {mb / median['store']:7.1f} MB/s vs put_object "
        f"{mb / median['put']:7.1f} MB/s;  load {mb / median['load']:7.1f} MB/s vs "
        f"get_object {mb / median['get']:7.1f} MB/s")  # fmt: skip
    log(f"           load ratio per round: {' '.join(f'{r:.2f}' for r in load_ratios)}")
    return {
        "store_ratio": round(statistics.median(store_ratios), 2),
        "load_ratio": round(statistics.median(load_ratios), 2),
        "store_ratios": [round(r, 2) for r in store_ratios],
        "load_ratios": [round(r, 2) for r in load_ratios],
        "store_mb_s": round(mb / median["store"], 1),
        "put_mb_s": round(mb / median["put"], 1),
        "load_mb_s": round(mb / median["load"], 1),
        "get_mb_s": round(mb / median["get"], 1),
    }


def io_manager_rows(endpoint: str, s3: Any, rounds: int) -> dict[str, Any]:
    log("S3IOManager vs put_object/get_object")
    small = io_rounds(endpoint, s3, 1_000_000, max(15, rounds * 5))  # cheap, noisy: many
    large = io_rounds(endpoint, s3, 100_000_000, max(15, rounds))  # one GET: noisy
    log("  (100 MB again, forced into 16 MiB parts: multipart_threshold=64 MiB)")
    parts = io_rounds(endpoint, s3, 100_000_000, max(5, rounds), multipart_threshold=64 * 2**20)
    return {"io_1mb": small, "io_100mb": large, "io_100mb_multipart": parts}


def load_after() -> float:
    load = round(os.getloadavg()[0], 2)
    log(f"load average after: {load}")
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 100,000 rows")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--io-only", action="store_true", help="only the S3IOManager rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.endpoint, args.key)))
        return
    rounds = args.rounds or (1 if args.quick else 3)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    os.environ.update(CREDENTIALS)
    load_before = round(os.getloadavg()[0], 2)
    log(f"load average before: {load_before} on {os.cpu_count()} CPUs")
    server, endpoint = start_server()
    try:
        s3 = _client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        if args.io_only:
            rows_only = io_manager_rows(endpoint, s3, rounds)
            print(json.dumps({"bench": "s3_reader", "io_only": True, **rows_only,
                              "load_before": load_before, "load_after": load_after()}))  # fmt: skip
            return
        jsonl_key, parquet_key = upload_rows(s3, rows)
        runs: dict[str, list[dict[str, Any]]] = {}
        for n in range(rounds):
            log(f"round {n + 1}/{rounds}")
            jsonl = ["reader-jsonl", "boto3-iter-lines"]
            parquet = ["reader-parquet", "read-table-to-pylist", "read-table"]
            for kind in jsonl if n % 2 == 0 else jsonl[::-1]:
                runs.setdefault(kind, []).append(measure(kind, endpoint, jsonl_key))
            for kind in parquet if n % 2 == 0 else parquet[::-1]:
                runs.setdefault(kind, []).append(measure(kind, endpoint, parquet_key))
        log(f"memory flat in object size: the readers on {rows // 2:,} rows")
        small_jsonl, small_parquet = upload_rows(s3, rows // 2, "half")
        half = {
            "jsonl": measure("reader-jsonl", endpoint, small_jsonl),
            "parquet": measure("reader-parquet", endpoint, small_parquet),
        }
        io_rows = io_manager_rows(endpoint, s3, rounds)
    finally:
        server.terminate()
        server.wait(timeout=30)

    def peak(kind: str) -> float:
        return round(max(r["rss_mb"] for r in runs[kind]), 1)

    out = {
        "bench": "s3_reader",
        "rows": rows,
        "rounds": rounds,
        "jsonl_reader_items_s": round(rate(runs["reader-jsonl"])),
        "jsonl_iter_lines_items_s": round(rate(runs["boto3-iter-lines"])),
        "jsonl_ratio": round(rate(runs["reader-jsonl"]) / rate(runs["boto3-iter-lines"]), 2),
        "parquet_reader_items_s": round(rate(runs["reader-parquet"])),
        "parquet_read_table_to_pylist_items_s": round(rate(runs["read-table-to-pylist"])),
        "parquet_read_table_items_s": round(rate(runs["read-table"])),
        "parquet_ratio": round(
            rate(runs["reader-parquet"]) / rate(runs["read-table-to-pylist"]), 2
        ),
        "parquet_reader_rss_mb": peak("reader-parquet"),
        "parquet_read_table_to_pylist_rss_mb": peak("read-table-to-pylist"),
        "jsonl_reader_rss_mb": peak("reader-jsonl"),
        "jsonl_reader_rss_mb_half_rows": round(half["jsonl"]["rss_mb"], 1),
        "parquet_reader_rss_mb_half_rows": round(half["parquet"]["rss_mb"], 1),
        "jsonl_iter_lines_rss_mb": peak("boto3-iter-lines"),
        **io_rows,
        "load_before": load_before,
        "load_after": load_after(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
