from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from flowstone_celery import CelerySettings, FlowstoneCelery, make_app


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("FLOWSTONE_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings() -> CelerySettings:
    # kombu's in-memory transport: real publishing and consuming, no services; a fixed
    # slot count, so whether a dispatch packs steps does not depend on the machine's CPUs
    return CelerySettings(
        broker_url="memory://", queue=f"test-{uuid.uuid4().hex[:8]}", worker_slots=16
    )


@pytest.fixture
def app(settings: CelerySettings) -> Iterator[FlowstoneCelery]:
    app = make_app(settings)
    yield app
    app.close_pipelines()
    app.close()
