from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[object]:
    from ui_pipelines import ASSETS

    import flowstone as fs

    p = fs.Pipeline("ui_unit", ASSETS, store=f"sqlite:///{tmp_path / 'runs.db'}")
    yield p
    p.close()


@pytest.fixture
def memory_pipeline() -> Iterator[object]:
    from ui_pipelines import ASSETS

    import flowstone as fs

    p = fs.Pipeline("ui_memory", ASSETS, store="memory://")
    yield p
    p.close()
