"""``flowstone db``: create, upgrade and inspect the FlowStone schema.

Registered through the ``flowstone.cli`` entry point::

    flowstone db upgrade [--create] [--database-url URL] [--schema NAME]
    flowstone db current [--database-url URL] [--schema NAME]

The URL defaults to ``FLOWSTONE_DATABASE_URL``. ``upgrade --create`` first creates the
database the URL names when the server has none by that name (connecting to the server's
``postgres`` database to do so), so a fresh server needs no other step.

Installed plugins that keep tables in the
schema (:class:`~flowstone_io_postgres.migrate.MigrationSet`, e.g. flowstone-scatter) are
upgraded with it and listed, one line each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from flowstone.errors import FlowStoneError
from flowstone_io_postgres import migrate
from flowstone_io_postgres._runtime import dsn
from flowstone_io_postgres._sql import is_db_error
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
        if name == "upgrade":
            sub.add_argument(
                "--create",
                action="store_true",
                help="create the database first if it does not exist",
            )
        sub.set_defaults(func=handler)


Work = Callable[[URL, asyncpg.Connection, str], Awaitable[str]]


def _run(args: argparse.Namespace, work: Work) -> tuple[int, str]:
    try:
        url = resolve_url(args.database_url)
        schema = validate_ident(args.schema, what="schema")
    except FlowStoneError as exc:
        print(f"flowstone db: {exc}", file=sys.stderr)
        return 2, ""

    async def go() -> str:
        if getattr(args, "create", False) and await _create_database(url):
            print(f"created database {url.database!r}")
        conn = await asyncpg.connect(dsn(url), timeout=10)
        try:
            return await work(url, conn, schema)
        finally:
            await conn.close()

    try:
        return 0, asyncio.run(go())
    except Exception as exc:
        if not (isinstance(exc, FlowStoneError | SQLAlchemyError) or is_db_error(exc)):
            raise
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        hint = ""
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            hint = " (create it with `flowstone db upgrade --create`)"
        print(f"flowstone db: failed on {safe_url(url)}: {detail}{hint}", file=sys.stderr)
        return 1, ""


async def _create_database(url: URL) -> bool:
    """Create the database ``url`` names unless it exists; True when it was created."""
    name = validate_ident(url.database or "", what="database")
    conn = await asyncpg.connect(dsn(url.set(database="postgres")), timeout=10)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')  # validated identifier
        except asyncpg.DuplicateDatabaseError:  # created meanwhile by someone else
            return False
        return True
    finally:
        await conn.close()


async def _plugin_lines(conn: asyncpg.Connection, schema: str) -> str:
    """One line per installed plugin's tables: ``  flowstone-scatter: revision X (head)``."""
    lines = []
    for extra in migrate.installed_sets():
        revision = str(await migrate.current_revision(conn, schema, extra) or "none")
        suffix = " (head)" if revision == extra.head else f" (head is {extra.head})"
        lines.append(f"\n  {extra.name}: revision {revision}{suffix}")
    return "".join(lines)


def _upgrade(args: argparse.Namespace) -> int:
    async def work(url: URL, conn: asyncpg.Connection, schema: str) -> str:
        await migrate.upgrade(url, schema)
        revision = await migrate.current_revision(conn, schema)
        return f"{revision} (head){await _plugin_lines(conn, schema)}"

    code, revision = _run(args, work)
    if code == 0:
        print(f"schema {args.schema!r} is at revision {revision}")
    return code


def _current(args: argparse.Namespace) -> int:
    async def work(_url: URL, conn: asyncpg.Connection, schema: str) -> str:
        revision = str(await migrate.current_revision(conn, schema) or "none")
        suffix = (
            " (head)"
            if revision == migrate.HEAD_REVISION
            else (f" (head is {migrate.HEAD_REVISION}; run `flowstone db upgrade`)")
        )
        return f"{revision}{suffix}{await _plugin_lines(conn, schema)}"

    code, revision = _run(args, work)
    if code == 0:
        print(f"schema {args.schema!r}: revision {revision}")
    return code
