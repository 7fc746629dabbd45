"""How a run shows on the terminal: ``run``, ``show``, ``approve``, ``signal``... share it."""

from __future__ import annotations

from typing import Any

from flowstone._cli.common import EXIT_FAILURE, EXIT_OK
from flowstone._cli.output import preview, print_json, table
from flowstone.errors import ExecutionError
from flowstone.runs import RunResult

__all__ = ["print_result", "result_exit_code", "result_json", "steps_json"]

_FAILED = frozenset({"failed", "cancelled"})


def result_exit_code(result: RunResult, *, detached: bool = False) -> int:
    """0 for succeeded and waiting runs (and running ones when detached), else 1."""
    if result.status in _FAILED or (result.status == "running" and not detached):
        return EXIT_FAILURE
    return EXIT_OK


def steps_json(result: RunResult) -> list[dict[str, Any]]:
    return [
        {
            "asset": s.asset,
            "partition": s.partition or None,
            "state": s.state,
            "attempt": s.attempt,
            "materialization_id": s.materialization_id,
            "error": s.error,
            "updated_at": s.updated_at,
        }
        for s in result.steps
    ]


def result_json(result: RunResult, *, include_value: bool = True) -> dict[str, Any]:
    """``RunResult.to_dict()`` plus, for a waiting run, the assets waiting on a signal."""
    data = result.to_dict(include_value=include_value)
    if not include_value:
        data.pop("value", None)
    if result.status == "waiting":
        data["waiting_for_signal"] = _signal_waits(result)
    return data


def _signal_waits(result: RunResult) -> list[str]:
    on_approval = {a.asset for a in result.approvals()}
    return [s.asset for s in result.steps if s.state == "waiting" and s.asset not in on_approval]


def print_result(
    result: RunResult,
    spec: str,
    *,
    as_json: bool,
    show_value: bool = True,
    show_steps: bool = True,
) -> None:
    """Print one run: a JSON document, or a readable summary with next steps."""
    if as_json:
        print_json(result_json(result, include_value=show_value))
        return
    where = f", partition {result.run.partition}" if result.run.partition else ""
    print(f"run {result.run_id} {result.status} (pipeline {result.run.pipeline}{where})")
    if show_steps:
        reused = {m.id for m in result.materializations if m.run_id != result.run_id}
        with_errors = any(s.error for s in result.steps)
        rows: list[list[object]] = []
        for s in result.steps:
            row: list[object] = [
                s.asset,
                s.partition,
                "reused" if s.materialization_id in reused else s.state,
            ]
            if with_errors:
                row.append(s.error and preview(s.error, 100))
            rows.append(row)
        headers = ("ASSET", "PARTITION", "STATE") + (("ERROR",) if with_errors else ())
        if rows:
            print(_indent(table(headers, rows)))
    if result.partial_failures:
        print(f"succeeded with {len(result.partial_failures)} tolerated failure(s):")
        for f in result.partial_failures:
            where = f"[{f.partition}]" if f.partition else ""
            print(f"  {f.asset}{where}: {preview(f.error, 200)}")
    if result.status == "waiting":
        _print_waits(result, spec)
    elif result.status in _FAILED and result.error:
        print(f"error: {preview(result.error, 500)}")
    elif result.status == "running":
        print(f"still running; follow it with: flowstone show {spec} {result.run_id}")
    if show_value and result.status == "succeeded":
        try:
            print(f"value: {preview(result.value)}")
        except ExecutionError as exc:  # a tolerated failure may leave no target value
            print(f"value: unavailable ({exc})")


def _print_waits(result: RunResult, spec: str) -> None:
    for a in result.approvals():
        print(f"waiting for approval {a.id} on asset {a.asset!r}: {a.message}")
        print(f"  approve: flowstone approve {spec} {a.id} --by NAME")
        print(f"  reject:  flowstone reject {spec} {a.id} --by NAME --reason TEXT")
    for asset in _signal_waits(result):
        print(f"waiting for a signal on asset {asset!r}")
        print(f"  resume:  flowstone signal {spec} TOKEN --payload JSON")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
