"""A pipeline that notes which process imported it (seed: worker start-up order).

Each import appends ``<pid>`` to ``$FLOWSTONE_IT_DIR/seed-startup-loads``, so a test can tell
whether a worker loaded its pipelines once, in the main process before the pool forked, or
in every pool process.
"""

from __future__ import annotations

import os
from pathlib import Path

import flowstone as fs

with (Path(os.environ["FLOWSTONE_IT_DIR"]) / "seed-startup-loads").open("a") as _loads:
    _loads.write(f"{os.getpid()}\n")


@fs.asset
def answer() -> int:
    return 42


pipeline = fs.Pipeline("it_seed_startup", [answer])
