"""A second pipeline with the quickstart's asset names (one store, two pipelines): its
``numbers`` leaves a marker file each time it runs, so a test can tell it never ran inside
another pipeline's run."""

import os
from pathlib import Path

import flowstone as fs


@fs.asset
def numbers(context: fs.Context) -> list[int]:
    marker = Path(os.environ["FLOWSTONE_IT_DIR"]) / f"twin-numbers-{context.run_id}"
    marker.write_text("ran")
    return [100]


@fs.asset
def doubled(numbers: list[int]) -> list[int]:
    return [n * 2 for n in numbers]


@fs.asset
def total(doubled: list[int]) -> int:
    return sum(doubled)


pipeline = fs.Pipeline("it_quickstart_twin", [numbers, doubled, total])
