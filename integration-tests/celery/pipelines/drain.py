"""A chain of six slow steps (``s1`` -> ... -> ``s6``) for the warm-drain test: each step
appends ``<name> <pid>`` to ``$FLOWSTONE_IT_SEED_DIR/ran`` when it starts; ``s2`` runs
for three seconds, the others for 0.6."""

from __future__ import annotations

import os
import time
from pathlib import Path

import flowstone as fs


def _mark(name: str, seconds: float = 0.6) -> None:
    with (Path(os.environ["FLOWSTONE_IT_SEED_DIR"]) / "ran").open("a") as out:
        out.write(f"{name} {os.getpid()}\n")
    time.sleep(seconds)


@fs.asset
def s1() -> int:
    _mark("s1")
    return 1


@fs.asset
def s2(s1: int) -> int:
    _mark("s2", 3.0)  # the test's SIGTERM lands while s2 runs, even on a loaded machine
    return s1 + 1


@fs.asset
def s3(s2: int) -> int:
    _mark("s3")
    return s2 + 1


@fs.asset
def s4(s3: int) -> int:
    _mark("s4")
    return s3 + 1


@fs.asset
def s5(s4: int) -> int:
    _mark("s5")
    return s4 + 1


@fs.asset
def s6(s5: int) -> int:
    _mark("s6")
    return s5 + 1


pipeline = fs.Pipeline("it_drain", [s1, s2, s3, s4, s5, s6])
