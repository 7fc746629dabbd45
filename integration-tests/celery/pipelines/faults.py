"""Faults: a flaky asset that fails its first attempts, and a slow asset to kill a worker in.

``slow`` writes ``$FLOWSTONE_IT_DIR/<run_id>.<attempt>.started`` (with the worker's pid) when
it begins, so a test knows which worker to kill mid-asset.
"""

import os
import time
from pathlib import Path

import flowstone as fs


@fs.asset(retry=fs.RetryPolicy(max_attempts=4, backoff="fixed", base_delay=0.2, jitter=0))
def flaky(context: fs.Context) -> int:
    if context.attempt < 3:
        raise ConnectionError(f"flaky source, attempt {context.attempt}")
    return context.attempt


@fs.asset
def after_flaky(flaky: int) -> str:
    return f"succeeded on attempt {flaky}"


@fs.asset
def before_slow() -> int:
    return 41


@fs.asset
def slow(context: fs.Context, before_slow: int) -> int:
    marker = Path(os.environ["FLOWSTONE_IT_DIR"], f"{context.run_id}.{context.attempt}.started")
    marker.write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("FLOWSTONE_IT_SLOW_SECONDS", "4")))
    return before_slow + 1


@fs.asset
def after_slow(slow: int) -> int:
    return slow * 2


pipeline = fs.Pipeline("it_faults", [flaky, after_flaky, before_slow, slow, after_slow])
