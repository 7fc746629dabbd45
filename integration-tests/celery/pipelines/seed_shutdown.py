"""A pipeline with a resource whose teardown leaves a marker (seeds: graceful shutdown,
defaults on the worker path).

Files go to ``$FLOWSTONE_IT_SEED_DIR``: ``started`` and ``finished`` by the step,
``teardown`` by the resource's teardown (one line per teardown, saying whether the step
had finished by then).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import flowstone as fs


def _dir() -> Path:
    return Path(os.environ["FLOWSTONE_IT_SEED_DIR"])


def _connect() -> dict[str, int]:
    return {"pid": os.getpid()}


def _disconnect(probe: dict[str, int]) -> None:
    finished = (_dir() / "finished").exists()
    with (_dir() / "teardown").open("a") as out:
        out.write(f"pid={probe['pid']} step_finished={finished}\n")


@fs.asset(requires=["probe"])
def slow_step(context: fs.Context) -> int:
    """Runs for about two seconds; returns the pid the ``probe`` resource was built in."""
    (_dir() / "started").write_text(str(os.getpid()))
    time.sleep(2)
    (_dir() / "finished").write_text(str(os.getpid()))
    return int(context.resources["probe"]["pid"])


pipeline = fs.Pipeline("it_seed_shutdown", [slow_step],
                       resources={"probe": fs.Resource(setup=_connect, teardown=_disconnect)})
