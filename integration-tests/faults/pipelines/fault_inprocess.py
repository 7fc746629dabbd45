"""The in-process fault pipeline: the embedded defaults (SQLite run store, SQLite values,
the in-process executor with its batched finishes), killed at chosen or random points.

Run as a script by the tests, one process per start or recovery::

    python fault_inprocess.py STATE_DIR start RUN_ID     # pipeline.run(run_id=RUN_ID)
    python fault_inprocess.py STATE_DIR recover RUN_ID   # pipeline.recover() until settled

``LAYERS`` x ``WIDTH`` assets, each reading every asset of the layer before and returning
``1 + sum(inputs)`` (so every value is known, see :func:`expected`). Each execution of an
asset appends ``<asset> <pid>`` to ``STATE_DIR/exec.log`` (one ``write`` of an ``O_APPEND``
file: lines never interleave) before it returns. An asset whose trap file
``STATE_DIR/trap.<asset>`` exists writes its pid to ``STATE_DIR/pid.<asset>`` and holds
for two minutes, once (the trap is removed when sprung). The lease is one second, so a
recovery takes over what a killed process held within about a second.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path
from typing import Any

import flowstone as fs

LAYERS, WIDTH = 6, 8
LEASE = 1.0
PAUSE = float(os.environ.get("FAULT_INPROCESS_PAUSE", "0.003"))  # each asset's own work


def names(layer: int) -> list[str]:
    return [f"l{layer}_{i}" for i in range(WIDTH)]


def expected() -> dict[str, int]:
    values: dict[str, int] = {}
    for layer in range(LAYERS):
        before = sum(values[d] for d in names(layer - 1)) if layer else 0
        values.update(dict.fromkeys(names(layer), 1 + before))
    return values


def _asset(state: Path, name: str, deps: list[str]) -> fs.AssetDef:
    def fn(**inputs: int) -> int:
        trap = state / f"trap.{name}"
        if trap.exists():
            trap.unlink()
            (state / f"pid.{name}").write_text(str(os.getpid()))
            time.sleep(120)
        time.sleep(PAUSE)
        fd = os.open(state / "exec.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{name} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return 1 + sum(inputs.values())

    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(d, inspect.Parameter.KEYWORD_ONLY) for d in deps]
    )
    return fs.asset(name=name)(fn)


def pipeline(state: Path) -> fs.Pipeline:
    assets = [_asset(state, n, names(layer - 1) if layer else [])
              for layer in range(LAYERS) for n in names(layer)]  # fmt: skip
    return fs.Pipeline("faults_inprocess", assets, store=f"sqlite:///{state / 'fs.db'}",
                       lease_seconds=LEASE)  # fmt: skip


def main(argv: list[str]) -> int:
    state, mode, run_id = Path(argv[0]), argv[1], argv[2]
    p = pipeline(state)
    try:
        if mode == "start":
            p.run(run_id=run_id)
            return 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run: Any = p.store.get_run(run_id)
            if run is not None and run.status in ("succeeded", "failed", "cancelled"):
                return 0
            p.recover(ready_for_seconds=0.2)
            time.sleep(0.1)
        return 1
    finally:
        p.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
