"""``run``, ``show``, ``cancel``, ``resume``, ``retry-failed-items``: starting runs and
following them."""

from __future__ import annotations

import argparse
import sys

from flowstone._cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Subparsers,
    add_json,
    add_partition,
    add_spec,
    open_pipeline,
    partition_of,
)
from flowstone._cli.output import print_json
from flowstone._cli.results import print_result, result_exit_code, result_json, steps_json
from flowstone._cli.run_watch import follow
from flowstone.errors import UsageError
from flowstone.pipeline import Pipeline

__all__ = ["register"]


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run",
        parents=[parent],
        help="materialize assets (default: every asset) and report the run",
        description="Materialize ASSETs and what they need (every asset when none is named). "
        "Values already materialized for the partition are reused unless --force. Exits 0 "
        "when the run succeeded or waits for an approval/signal, 1 when it failed or was "
        "cancelled.",
    )
    add_spec(p)
    p.add_argument("assets", nargs="*", metavar="ASSET", help="target assets")
    add_partition(p)
    p.add_argument("--force", action="store_true", help="recompute even if materialized")
    p.add_argument(
        "--no-deps", action="store_true", help="run only the targets; their inputs must exist"
    )
    p.add_argument("--executor", metavar="NAME", help="use this executor plugin for this run")
    p.add_argument(
        "--detach",
        action="store_true",
        help="do not wait: print the run id and return (an in-process executor still runs "
        "the run before returning; a queue-based one only enqueues it)",
    )
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="cancel the run after this")
    p.add_argument(
        "--tag", action="append", default=[], metavar="K=V", help="tag the run (repeatable)"
    )
    add_json(p)
    p.set_defaults(func=cmd_run, asset_logs=True)

    p = sub.add_parser(
        "show",
        parents=[parent],
        help="show one run and its steps",
        description="Show a run's status, its steps and, for a waiting run, what it waits "
        "for. Always exits 0 when the run exists.",
    )
    add_spec(p)
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--value", action="store_true", help="also load and show the run's value")
    add_json(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "cancel",
        parents=[parent],
        help="cancel a running or waiting run",
        description="Cancel a run: nothing new starts; assets already running finish but "
        "are not recorded. Exits 1 when the run had already finished.",
    )
    add_spec(p)
    p.add_argument("run_id", metavar="RUN_ID")
    add_json(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "resume",
        parents=[parent],
        help="re-run the unfinished steps of a failed or cancelled run",
        description="Run a failed or cancelled run's unfinished steps again, in the same run. "
        "Exits like `run`.",
    )
    add_spec(p)
    p.add_argument("run_id", metavar="RUN_ID")
    add_json(p)
    p.set_defaults(func=cmd_resume, asset_logs=True)

    p = sub.add_parser(
        "retry-failed-items",
        parents=[parent],
        help="re-run only the failed items of a finished scatter, in a new run",
        description="Start a new run of the scatter ASSET that reuses the succeeded item "
        "results of RUN_ID and runs only the items that failed (or never ran), so the new "
        "value has every item. Dependencies are reused; downstream assets are not run. The "
        "earlier run is unchanged. Exits like `run`.",
    )
    add_spec(p)
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("asset", metavar="ASSET", help="the scatter asset whose items to retry")
    add_partition(p, "the partition the earlier run scattered (as text)")
    add_json(p)
    p.set_defaults(func=cmd_retry_failed_items, asset_logs=True)


def _tags(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {pair!r} must look like KEY=VALUE, e.g. --tag team=data")
        tags[key] = value
    return tags


def cmd_run(args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    tags = _tags(args.tag)
    with open_pipeline(args.spec) as pipeline:
        partition = partition_of(pipeline, args.assets, args.partition)
        original = pipeline.executor
        if args.executor:
            pipeline.use_executor(args.executor)
        try:
            # workers run it: follow it here (progress line, no-worker notice)
            follow_here = not args.detach and not pipeline.executor.blocking
            result = pipeline.run(
                args.assets or None,
                partition,
                force=args.force,
                with_deps=not args.no_deps,
                tags=tags,
                wait=not args.detach and not follow_here,
                timeout=args.timeout,
            )
            if args.detach:
                return _print_detached(result.run_id, result.status, args)
            if follow_here:
                quiet = bool(args.quiet or getattr(args, "sub_quiet", False))
                result = follow(pipeline, result, spec=args.spec, timeout=args.timeout,
                                stream=sys.stderr, quiet=quiet)
            print_result(result, args.spec, as_json=args.json)
            return result_exit_code(result)
        finally:
            if pipeline.executor is not original:
                # The pipeline object may be reused in this process (same module): give it
                # back the executor it was built with.
                pipeline.executor.close()
                pipeline.use_executor(original)


def _print_detached(run_id: str, status: str, args: argparse.Namespace) -> int:
    if args.json:
        print_json({"run_id": run_id, "status": status})
    else:
        print(run_id)
        print(
            f"run {run_id} is {status}; follow it with: flowstone show {args.spec} {run_id}",
            flush=True,
        )
    return EXIT_FAILURE if status in ("failed", "cancelled") else EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        result = pipeline.result(args.run_id)
        if args.json:
            data = result_json(result, include_value=args.value)
            data["steps"] = steps_json(result)
            data["tags"] = dict(result.run.tags)
            data["created_at"] = result.run.created_at
            data["updated_at"] = result.run.updated_at
            print_json(data)
        else:
            print_result(result, args.spec, as_json=False, show_value=args.value)
            if result.run.tags:
                print("tags: " + ", ".join(f"{k}={v}" for k, v in result.run.tags.items()))
        return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        _require_run(pipeline, args.run_id)
        cancelled = pipeline.cancel(args.run_id)
        status = pipeline.result(args.run_id).status
        if args.json:
            print_json({"run_id": args.run_id, "cancelled": cancelled, "status": status})
        elif cancelled:
            print(f"cancelled run {args.run_id}")
        else:
            print(f"run {args.run_id} is already {status}; nothing to cancel")
        return EXIT_OK if cancelled else EXIT_FAILURE


def cmd_resume(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        status = _require_run(pipeline, args.run_id)
        if status not in ("failed", "cancelled"):
            raise UsageError(
                f"run {args.run_id} is {status}; only failed or cancelled runs can be resumed"
            )
        result = pipeline.resume(args.run_id)
        print_result(result, args.spec, as_json=args.json)
        # a queue-based executor resumes on its workers: "running" is success here
        return result_exit_code(result, detached=True)


def cmd_retry_failed_items(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        partition = partition_of(pipeline, [args.asset], args.partition)
        result = pipeline.retry_failed_items(args.run_id, args.asset, partition)
        print_result(result, args.spec, as_json=args.json)
        return result_exit_code(result)


def _require_run(pipeline: Pipeline, run_id: str) -> str:
    """The run's status; raises RunNotFoundError (exit 2) for an unknown id."""
    return pipeline.result(run_id).status
