"""``approvals``, ``approve``, ``reject``, ``signal``: deciding what a run waits for."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flowstone._cli.common import (
    EXIT_OK,
    Subparsers,
    add_json,
    add_spec,
    open_pipeline,
    partition_of,
)
from flowstone._cli.output import print_json, table
from flowstone._cli.results import print_result, result_exit_code
from flowstone.errors import UsageError
from flowstone.pipeline import Pipeline
from flowstone.records import Approval
from flowstone.runs import RunResult

__all__ = ["approval_json", "register"]

_APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired", "all")


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("approvals", parents=[parent], help="list approvals (default: pending)")
    add_spec(p)
    p.add_argument(
        "--status", choices=_APPROVAL_STATUSES, default="pending", help="default: pending"
    )
    add_json(p)
    p.set_defaults(func=cmd_approvals)

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        p = sub.add_parser(
            name,
            parents=[parent],
            help=f"{verb} a pending approval and resume its run",
            description=f"{verb.capitalize()} a pending approval, by ID or by --run-id/--asset "
            "(/--partition), and resume the run in this process (with a queue-based executor "
            "the run continues on the workers). "
            + (
                "Exits 1 when the resumed run fails."
                if name == "approve"
                else "The asset fails and so does the run; that is success here (exit 0)."
            ),
        )
        add_spec(p)
        p.add_argument("approval_id", nargs="?", type=int, metavar="ID", help="the approval id")
        p.add_argument("--run-id", metavar="RUN_ID", help="instead of ID: the waiting run")
        p.add_argument("--asset", metavar="ASSET", help="with --run-id: the waiting asset")
        p.add_argument("--partition", "-p", metavar="P", help="with --run-id: its partition")
        p.add_argument("--by", metavar="NAME", help="who decides (recorded in the audit log)")
        if name == "reject":
            p.add_argument("--reason", metavar="TEXT", help="why (recorded as the asset's error)")
        add_wait(p)
        add_json(p)
        p.set_defaults(func=cmd_approve if name == "approve" else cmd_reject, asset_logs=True)

    p = sub.add_parser(
        "signal",
        parents=[parent],
        help="resume the asset waiting on a signal gate",
        description="Resume the asset waiting on the gate with TOKEN (a token works once). "
        "Pass TOKEN as '-' to read it from stdin and keep it out of the process list. "
        "Exits 1 when the resumed run fails.",
    )
    add_spec(p)
    p.add_argument("token", metavar="TOKEN")
    payload = p.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="JSON", help="the payload, as JSON text")
    payload.add_argument(
        "--payload-file", metavar="FILE", help="read the JSON payload from FILE ('-' for stdin)"
    )
    add_wait(p)
    add_json(p)
    p.set_defaults(func=cmd_signal, asset_logs=True)


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the resumed run settles (succeeds, fails or waits again) before "
        "printing it (default); --no-wait prints it at once, `running` while the workers "
        "carry on (a queue-based executor)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        metavar="SECONDS",
        help="stop waiting after this; the run carries on",
    )


def settled(pipeline: Pipeline, result: RunResult, args: argparse.Namespace) -> RunResult:
    """``result``, or with ``--wait`` the run once it no longer runs (an in-process
    executor has finished it already; a queue-based one carries on on the workers)."""
    if not args.wait or result.status != "running":
        return result
    if args.wait_timeout is not None and args.wait_timeout <= 0:
        raise UsageError(f"--wait-timeout must be positive, got {args.wait_timeout}")
    return pipeline.wait(result.run_id, timeout=args.wait_timeout)[0]


def approval_json(a: Approval) -> dict[str, Any]:
    return {
        "id": a.id,
        "run_id": a.run_id,
        "asset": a.asset,
        "partition": a.partition or None,
        "message": a.message,
        "status": a.status,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "decided_by": a.decided_by,
        "decided_at": a.decided_at,
        "reason": a.reason,
    }


def cmd_approvals(args: argparse.Namespace) -> int:
    status = None if args.status == "all" else args.status
    with open_pipeline(args.spec) as pipeline:
        found = pipeline.approvals(status=status)
        if args.json:
            print_json({"approvals": [approval_json(a) for a in found]})
        elif not found:
            print(f"no {args.status} approvals" if status else "no approvals")
        else:
            rows = [
                (
                    a.id,
                    a.status,
                    a.asset,
                    a.partition,
                    a.run_id,
                    a.created_at,
                    a.expires_at,
                    a.decided_by if a.decided_at else None,
                    a.decided_at,
                    a.message,
                )
                for a in found
            ]
            headers = ("ID", "STATUS", "ASSET", "PARTITION", "RUN", "CREATED (UTC)")
            decided = ("EXPIRES (UTC)", "DECIDED BY", "DECIDED (UTC)", "MESSAGE")
            print(table((*headers, *decided), rows))
        return EXIT_OK


def _decide(args: argparse.Namespace, pipeline: Pipeline, *, approved: bool) -> RunResult:
    by_key = args.run_id is not None or args.asset is not None
    if args.approval_id is not None and (by_key or args.partition is not None):
        raise UsageError("give either an approval ID or --run-id/--asset, not both")
    if args.approval_id is None and (args.run_id is None or args.asset is None):
        raise UsageError(
            "say which approval: an ID (see `flowstone approvals`) or --run-id RUN --asset ASSET"
        )
    partition = partition_of(pipeline, [args.asset], args.partition) if args.asset else None
    if approved:
        return pipeline.approve(
            args.approval_id, run_id=args.run_id, asset=args.asset, partition=partition, by=args.by
        )
    return pipeline.reject(
        args.approval_id,
        run_id=args.run_id,
        asset=args.asset,
        partition=partition,
        by=args.by,
        reason=args.reason,
    )


def _which(args: argparse.Namespace) -> str:
    if args.approval_id is not None:
        return f"approval {args.approval_id}"
    return f"the approval of {args.asset!r} in run {args.run_id}"


def cmd_approve(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        result = settled(pipeline, _decide(args, pipeline, approved=True), args)
        if not args.json:
            print(f"approved {_which(args)}" + (f" (by {args.by})" if args.by else ""))
        print_result(result, args.spec, as_json=args.json)
        return result_exit_code(result, detached=True)


def cmd_reject(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        result = settled(pipeline, _decide(args, pipeline, approved=False), args)
        if not args.json:
            print(f"rejected {_which(args)}" + (f" (by {args.by})" if args.by else ""))
        print_result(result, args.spec, as_json=args.json, show_value=False)
        return EXIT_OK


def _read_payload(args: argparse.Namespace, stdin_used: bool) -> Any:
    if args.payload is not None:
        text, where = args.payload, "--payload"
    elif args.payload_file is not None:
        if args.payload_file == "-":
            if stdin_used:
                raise UsageError("TOKEN and --payload-file cannot both be read from stdin ('-')")
            text, where = sys.stdin.read(), "stdin"
        else:
            path = Path(args.payload_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot read --payload-file {str(path)!r}: {exc}") from exc
            where = str(path)
    else:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"the payload from {where} is not valid JSON ({exc}); e.g. --payload "
            "'{\"result\": 42}'"
        ) from exc


def cmd_signal(args: argparse.Namespace) -> int:
    given: str = args.token
    from_stdin = given == "-"
    token = sys.stdin.readline().strip() if from_stdin else given
    if from_stdin and not token:
        raise UsageError("TOKEN '-' reads the token from stdin, but stdin was empty")
    payload = _read_payload(args, from_stdin)
    with open_pipeline(args.spec) as pipeline:
        result = settled(pipeline, pipeline.signal(token, payload), args)
        if not args.json:
            print("signal delivered")
        print_result(result, args.spec, as_json=args.json)
        return result_exit_code(result, detached=True)
