"""``flowstone db``: create, upgrade and inspect the FlowStone schema.

Registered through the ``flowstone.cli`` entry point::

    flowstone db upgrade [--database-url URL] [--schema NAME]
    flowstone db current [--database-url URL] [--schema NAME]

The URL defaults to ``FLOWSTONE_DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from flowstone.errors import FlowStoneError
from flowstone_io_postgres import migrate
from flowstone_io_postgres._runtime import AsyncRuntime, EngineOptions
from flowstone_io_postgres.identifiers import validate_ident
from flowstone_io_postgres.urls import ENV_VAR, resolve_url, safe_url

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``db`` command (with ``upgrade`` and ``current``) to FlowStone's CLI."""
    db = subparsers.add_parser("db", help="manage the FlowStone PostgreSQL schema")
    commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    for name, handler, text in (
        ("upgrade", _upgrade, "create or upgrade the schema to the newest revision"),
        ("current", _current, "print the schema's current revision"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--database-url", default=None, help=f"PostgreSQL URL (default: ${ENV_VAR})"
        )
        sub.add_argument("--schema", default="flowstone", help="schema name (default: flowstone)")
        sub.set_defaults(func=handler)


def _run(args: argparse.Namespace, work: Any) -> tuple[int, str]:
    try:
        url = resolve_url(args.database_url)
        schema = validate_ident(args.schema, what="schema")
    except FlowStoneError as exc:
        print(f"flowstone db: {exc}", file=sys.stderr)
        return 2, ""
    runtime = AsyncRuntime(url, EngineOptions(pool_size=1, max_overflow=0), name="flowstone-db")
    try:
        return 0, runtime.run(lambda engine, _auto: work(engine, schema))
    except (FlowStoneError, SQLAlchemyError, OSError, TimeoutError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"flowstone db: failed on {safe_url(url)}: {detail}", file=sys.stderr)
        return 1, ""
    finally:
        runtime.close()


def _upgrade(args: argparse.Namespace) -> int:
    async def work(engine: AsyncEngine, schema: str) -> str:
        await migrate.upgrade(engine, schema)
        return str(await migrate.current_revision(engine, schema))

    code, revision = _run(args, work)
    if code == 0:
        print(f"schema {args.schema!r} is at revision {revision} (head)")
    return code


def _current(args: argparse.Namespace) -> int:
    async def work(engine: AsyncEngine, schema: str) -> str:
        return str(await migrate.current_revision(engine, schema) or "none")

    code, revision = _run(args, work)
    if code == 0:
        suffix = (
            " (head)"
            if revision == migrate.HEAD_REVISION
            else (f" (head is {migrate.HEAD_REVISION}; run `flowstone db upgrade`)")
        )
        print(f"schema {args.schema!r}: revision {revision}{suffix}")
    return code
