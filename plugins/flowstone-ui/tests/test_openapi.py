"""The JSON API against its own OpenAPI document, with schemathesis: no 500s, every response
matches its declared schema and status codes, with and without the token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from ui_helpers import TOKEN

import flowstone as fs


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ui_pipelines import ASSETS

    from flowstone_ui import create_app

    where: Path = tmp_path_factory.mktemp("openapi")
    pipeline = fs.Pipeline("ui_unit", ASSETS, store=f"sqlite:///{where / 'runs.db'}")
    pipeline.run("handled")
    pipeline.run("squares")
    pipeline.run("shipped")
    pipeline.run("keyed", "k0001")
    app = create_app([pipeline], token=TOKEN)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.flowstone.backfills.join()
    pipeline.close()


_BOUNDED = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _operations(api: Any, method: str | None = None) -> list[Any]:
    ops = [result.ok() for result in api.get_all_operations()]
    return [op for op in ops if method is None or op.method.upper() == method]


def test_api_conforms_with_the_token(api_schema: Any) -> None:
    ops = _operations(api_schema)
    assert len(ops) >= 16
    for op in ops:

        @given(case=op.as_strategy())
        @_BOUNDED
        def check(case: Any) -> None:
            # every check but "schema-valid data is accepted": an opaque cursor or a key
            # outside a partition set is schema-valid text, and refusing it (400) is right
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                                   excluded_checks=[positive_data_acceptance])

        check()


def test_actions_without_the_token_are_refused(api_schema: Any) -> None:
    ops = _operations(api_schema, "POST")
    assert len(ops) == 6
    for op in ops:

        @given(case=op.as_strategy())
        @_BOUNDED
        def check(case: Any) -> None:
            response = case.call()
            assert response.status_code == 401, (case.path, response.text)
            case.validate_response(response)

        check()
