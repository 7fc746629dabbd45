"""Twenty-four independent assets ``p00`` ... ``p23`` for the packing tests: each appends
``<name> <attempt> <pid>`` to ``$FLOWSTONE_IT_SEED_DIR/ran`` when it runs, so a test counts
how often user code ran, apart from what FlowStone recorded. A worker started with
``FLOWSTONE_IT_PACK_SLEEP=<seconds>`` makes each take that long after writing its line."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import flowstone as fs

N = 24


def _make(i: int) -> Any:
    name = f"p{i:02d}"

    def fn(context: fs.Context) -> int:
        with (Path(os.environ["FLOWSTONE_IT_SEED_DIR"]) / "ran").open("a") as out:
            out.write(f"{name} {context.attempt} {os.getpid()}\n")
        time.sleep(float(os.environ.get("FLOWSTONE_IT_PACK_SLEEP", "0")))
        return i

    return fs.asset(name=name)(fn)


pipeline = fs.Pipeline("it_pack", [_make(i) for i in range(N)])
