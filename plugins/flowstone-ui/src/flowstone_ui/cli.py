"""``flowstone ui``: serve the web UI for some pipelines.

Registered in ``flowstone.cli``; also runnable as ``python -m flowstone_ui``.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Sequence
from typing import Any

from flowstone.errors import FlowStoneError

__all__ = ["main", "register", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000


def register(subparsers: Any) -> None:
    """Add the ``ui`` subcommand to ``flowstone``'s argparse subparsers."""
    parser = subparsers.add_parser(
        "ui",
        help="serve the web UI (asset graph, runs, partitions, scatter progress, waits)",
        description=(
            "Serve the FlowStone web UI for the given pipelines, against the run store they "
            "use (SQLite or Postgres). Actions (approve, reject, cancel, resume, retry, "
            "backfill) need a token: FLOWSTONE_UI_TOKEN, else one generated now and printed "
            "in the URL to open."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=handle)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipelines", nargs="+", metavar="FILE_OR_MODULE:PIPELINE",
                        help="the pipelines to show (they must share one run store)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--protect-reads", action="store_true",
                        help="require the token for the pages and the read API too")


def handle(args: argparse.Namespace) -> int:
    from flowstone.loading import load_pipeline

    try:
        pipelines = [load_pipeline(spec) for spec in args.pipelines]
        return serve(pipelines, host=args.host, port=args.port, protect_reads=args.protect_reads)
    except FlowStoneError as exc:
        print(f"flowstone ui: {exc}", file=sys.stderr)
        return 2


def serve(
    pipelines: Sequence[Any], *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
    protect_reads: bool = False, token: str | None = None,
) -> int:
    """Serve the UI until interrupted (SIGINT/SIGTERM); returns the exit code.

    Raises:
        UsageError: a bad port, pipelines on different stores, or a short token.
    """
    import uvicorn

    from flowstone.errors import UsageError
    from flowstone_ui.app import create_app
    from flowstone_ui.auth import TOKEN_ENV, resolve_token

    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port number (0-65535)")
    secret, generated = resolve_token(token)
    app = create_app(pipelines, token=secret, protect_reads=protect_reads)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections queue from now on, before the URL is printed
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc}; pick another --port") from exc
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    if not _loopback(host):
        print(f"warning: listening on {host}, reachable from other machines; anyone with the "
              "token can act", file=sys.stderr)  # fmt: skip
    url = f"http://{shown}:{bound}/"
    if generated:
        print(f"FlowStone UI: {url}?token={secret}", flush=True)
        print(f"(token generated for this server; set {TOKEN_ENV} to choose one)", flush=True)
    else:
        print(f"FlowStone UI: {url} (token from {TOKEN_ENV})", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        app.state.flowstone.backfills.join()
        for p in pipelines:
            p.close()
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowstone_ui PIPELINE... [--host] [--port]``."""
    parser = argparse.ArgumentParser(prog="python -m flowstone_ui", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return handle(args)
