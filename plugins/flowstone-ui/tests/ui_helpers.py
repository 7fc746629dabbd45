"""Small helpers shared by the UI's unit tests."""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi.testclient import TestClient

TOKEN = "unit-test-token-0123456789abcdef"


def client_for(*pipelines: Any, protect_reads: bool = False) -> TestClient:
    from flowstone_ui import create_app

    return TestClient(create_app(list(pipelines), token=TOKEN, protect_reads=protect_reads),
                      follow_redirects=False)


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def sign_in(client: TestClient) -> str:
    """Open the printed URL (sets the session cookie); return the page's CSRF token."""
    assert client.get(f"/?token={TOKEN}").status_code == 303
    page = client.get("/pipelines/ui_unit/assets/keyed/partitions?limit=1")  # has a form
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return found.group(1)


def wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
