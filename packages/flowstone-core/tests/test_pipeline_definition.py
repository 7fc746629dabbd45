"""Definition-time validation: a wrong pipeline fails at construction, saying how to fix it."""

from __future__ import annotations

from typing import Any

import pytest

import flowstone as fs


@fs.asset
def orders() -> list[dict[str, Any]]:
    return [{"id": 1, "total": 40}, {"id": 2, "total": 250}]


@fs.asset
def revenue(orders: list[dict[str, Any]]) -> int:
    return sum(o["total"] for o in orders)


def test_decorated_function_still_calls_as_the_plain_function() -> None:
    assert revenue([{"total": 2}, {"total": 3}]) == 5
    assert orders()[0]["id"] == 1
    assert revenue.name == "revenue" and revenue.deps == ("orders",)

    @fs.router(branches=["a"])
    def pick(orders: Any) -> str:
        return "a"

    assert pick([]) == "a"


def test_unknown_dependency_names_asset_parameter_and_suggestion() -> None:
    @fs.asset
    def report(revenu: int) -> str:
        return str(revenu)

    with pytest.raises(fs.DependencyError) as err:
        fs.Pipeline("p", [orders, revenue, report], store="memory://")
    msg = str(err.value)
    assert "'report'" in msg and "'revenu'" in msg and "Did you mean 'revenue'" in msg


def test_duplicate_asset_names_rejected() -> None:
    dup = fs.asset(name="orders")(lambda: [])
    with pytest.raises(fs.DependencyError, match="two assets are named 'orders'"):
        fs.Pipeline("p", [orders, dup], store="memory://")


def test_cycle_error_is_a_definition_error() -> None:
    @fs.asset
    def a(b: Any) -> Any:
        return b

    @fs.asset
    def b(a: Any) -> Any:
        return a

    with pytest.raises(fs.DefinitionError):
        fs.Pipeline("p", [a, b], store="memory://")


def test_missing_resource_names_asset_and_fix() -> None:
    @fs.asset(requires=["warehouse"])
    def load(context: fs.Context) -> None:
        return None

    with pytest.raises(fs.ResourceError) as err:
        fs.Pipeline("p", [load], store="memory://")
    assert "'load'" in str(err.value) and "warehouse" in str(err.value)
    assert "resources=" in str(err.value)


def test_router_branch_without_routed_from_rejected() -> None:
    @fs.router(branches=["small", "large"])
    def size(orders: Any) -> str:
        return "small"

    @fs.asset(routed_from="size")
    def small(orders: Any) -> str:
        return "s"

    @fs.asset
    def large(orders: Any) -> str:
        return "l"

    with pytest.raises(fs.DefinitionError, match="'large' does not declare routed_from='size'"):
        fs.Pipeline("p", [orders, size, small, large], store="memory://")


def test_routed_from_a_non_router_rejected() -> None:
    @fs.asset(routed_from="orders")
    def small(orders: Any) -> str:
        return "s"

    with pytest.raises(fs.DefinitionError, match="not a @router"):
        fs.Pipeline("p", [orders, small], store="memory://")


def test_parallel_final_missing_rejected() -> None:
    @fs.asset(parallel=fs.Parallel(branches={"maps": "generate_maps"}))
    def enrich(branches: Any) -> Any:
        return branches

    with pytest.raises(fs.DefinitionError, match="'generate_maps', which is not an asset"):
        fs.Pipeline("p", [enrich], store="memory://")


def test_optional_deps_must_be_deps() -> None:
    with pytest.raises(fs.DependencyError, match=r"optional_deps \['small'\]"):

        @fs.asset(optional_deps=["small"])
        def handled(large: Any = None) -> Any:
            return large


def test_bad_partitions_type_rejected() -> None:
    @fs.asset(partitions=["2024-01-01"])
    def daily() -> int:
        return 1

    with pytest.raises(fs.DefinitionError, match="partitions= must be a partition set"):
        fs.Pipeline("p", [daily], store="memory://")


@pytest.mark.parametrize(
    "make",
    [
        lambda: fs.RetryPolicy(max_attempts=0),
        lambda: fs.RetryPolicy(backoff="random"),  # type: ignore[arg-type]
        lambda: fs.RetryPolicy(base_delay=-1),
        lambda: fs.RetryPolicy(jitter=2),
        lambda: fs.RetryPolicy(retry_on=ValueError),  # type: ignore[arg-type]
        lambda: fs.Scatter(),
        lambda: fs.Scatter(items=lambda: [], reader=fs.readers.Iterable([])),
        lambda: fs.Scatter(items=lambda: [], max_concurrent=0),
        lambda: fs.Scatter(items=lambda: [], failure_threshold=1.5),
        lambda: fs.Scatter(items=lambda: [], rate_limit="fast"),
        lambda: fs.Batching(),
        lambda: fs.Batching(max_items=0),
        lambda: fs.Parallel(branches={}),
        lambda: fs.Parallel(branches={"a": "x"}, mode="some"),  # type: ignore[arg-type]
    ],
)
def test_bad_policy_arguments_raise_usage_errors(make: Any) -> None:
    with pytest.raises(fs.UsageError):
        make()


def test_retry_must_be_a_policy_object() -> None:
    with pytest.raises(fs.DefinitionError, match="retry= must be a RetryPolicy"):

        @fs.asset(retry=3)  # type: ignore[arg-type]
        def flaky() -> int:
            return 1


def test_invalid_asset_name_rejected() -> None:
    with pytest.raises(fs.DefinitionError, match="not valid"):
        fs.asset(name="bad name")(lambda: 1)


def test_an_unknown_asset_option_is_refused_with_the_closest_name() -> None:
    """@asset's options are declared once (AssetOptions); a typo is an error, not ignored."""
    expected = r"unknown option 'retyr' \(did you mean 'retry'\?\)"
    with pytest.raises(fs.DefinitionError, match=expected):
        fs.asset(retyr=fs.RetryPolicy(max_attempts=2))(lambda: 1)  # type: ignore[call-overload]
