"""Fixtures for the UI's browser tests: the Celery suite's throwaway database and broker,
workers serving ``pipelines/ui_it.py`` on a queue of their own, the UI served by uvicorn on
127.0.0.1 in this process, and headless Chromium (Debian's ``chromium``) driven by
Playwright's Python API.

Screenshots go to the session's state directory; with ``FLOWSTONE_UI_DOCS_IMAGES=1`` they
are also written to ``docs/images/`` (the ones docs/ui.md shows).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CELERY_IT = Path(__file__).parent.parent / "celery"
sys.path.insert(0, str(CELERY_IT))

from celery_it import Cluster  # noqa: E402

_spec = importlib.util.spec_from_file_location("celery_it_conftest_ui", CELERY_IT / "conftest.py")
assert _spec is not None and _spec.loader is not None
_celery_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_celery_conftest)
database_url = _celery_conftest.database_url
redis_url = _celery_conftest.redis_url
state_dir = _celery_conftest.state_dir
client_env = _celery_conftest.client_env
unavailable = _celery_conftest.unavailable

SPEC = f"{Path(__file__).parent / 'pipelines' / 'ui_it.py'}:pipeline"
CHROMIUM = os.environ.get("FLOWSTONE_IT_CHROMIUM", "/usr/bin/chromium")
TOKEN = "ui-integration-token-" + uuid.uuid4().hex
DOCS_IMAGES = Path(__file__).parents[2] / "docs" / "images"


@pytest.fixture(scope="session")
def cluster(client_env: str, database_url: str, redis_url: str,
            state_dir: Path) -> Iterator[Cluster]:
    """Two workers serving the UI test pipeline on a queue of their own."""
    c = Cluster(redis_url, f"fs-it-ui-{uuid.uuid4().hex[:8]}", database_url, state_dir,
                specs=[SPEC])
    try:
        c.start("u1", concurrency=2)
        yield c
    finally:
        c.stop_all()
        c.purge()


@pytest.fixture(scope="session")
def pipeline(cluster: Cluster) -> Iterator[Any]:
    """The pipeline as a client of those workers (Celery executor, Postgres store)."""
    from flowstone.loading import load_pipeline
    from flowstone_celery import CeleryExecutor, load_settings

    p = load_pipeline(SPEC)
    p.use_executor(CeleryExecutor(load_settings(queue=cluster.queue)))
    yield p
    p.close()


class Server:
    """The UI app under uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the UI server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


@pytest.fixture(scope="session")
def ui(pipeline: Any) -> Iterator[Server]:
    from flowstone_ui import create_app

    app = create_app([pipeline], token=TOKEN)
    with Server(app) as server:
        yield server
    app.state.flowstone.backfills.join()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        unavailable("Chromium", "apt-get install -y chromium (or set FLOWSTONE_IT_CHROMIUM)",
                    FileNotFoundError(CHROMIUM))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, ui: Server) -> Iterator[Any]:
    """A fresh signed-in browser tab (it opened the URL with the token, as a user would)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=ui.url)
    tab = context.new_page()
    tab.goto(f"/?token={TOKEN}")
    yield tab
    context.close()


@pytest.fixture
def shoot(state_dir: Path) -> Any:
    """``shoot(page, name)`` saves a screenshot as a test artifact (and for the docs)."""

    def take(tab: Any, name: str) -> Path:
        from playwright.sync_api import TimeoutError as CaptureTimedOut

        out = state_dir / "screenshots" / f"{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            tab.screenshot(path=str(out), full_page=True, timeout=15_000)
        except CaptureTimedOut:
            # headless Chromium now and then never delivers the frame a capture waits for
            # (a full-page capture hung 30 s after "fonts loaded" once, in a CI run on a
            # busy machine); a second capture, of the viewport, gets a fresh one
            tab.screenshot(path=str(out), timeout=30_000)
        assert out.stat().st_size > 10_000, f"screenshot {name} looks empty"
        if os.environ.get("FLOWSTONE_UI_DOCS_IMAGES") == "1":
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out, DOCS_IMAGES / f"{name}.png")
        return out

    return take
