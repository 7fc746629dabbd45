"""One sweep reaches every run it should, however many pages they span
(:mod:`flowstone.testing.sweep_contract`), on the memory and the SQLite store."""

from __future__ import annotations

import pytest
from conftest import PipelineFactory

from flowstone.testing.sweep_contract import SweepContract


class TestSweepPaging(SweepContract):
    @pytest.fixture
    def sweep_pipeline(self, make_pipeline: PipelineFactory) -> PipelineFactory:
        return make_pipeline
