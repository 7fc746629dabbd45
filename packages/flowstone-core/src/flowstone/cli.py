"""The ``flowstone`` command line (also ``python -m flowstone``).

Every command that acts on a pipeline takes ``FILE_OR_MODULE:PIPELINE`` first, and every
command that reads state accepts ``--json`` and then prints exactly one JSON document.
Exit codes: 0 success (a run waiting for an approval or a signal included), 1 an asset or
run failed (or a health check), 2 a usage or definition error. Errors print as
``error: <message>`` on stderr; ``--debug`` adds the traceback. ``docs/cli.md`` has it all.

Plugins add subcommands through the ``flowstone.cli`` entry-point group: each entry point
is a callable ``register(subparsers) -> None`` that adds parsers with
``set_defaults(func=handler)``, ``handler(args) -> int`` returning the exit code; a
command that sets up logging itself (``flowstone worker``: Celery's handlers) also sets
``own_logging=True``, so its lines are not printed a second time by the CLI's stderr
handler. They are loaded only when the command line does not name a core command
(``flowstone worker``, ``flowstone --help``), and a plugin that fails to load is reported
on stderr without taking the other commands down.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType

from flowstone._cli import backfill_cmd, ops_cmds, run_cmds, state_cmds, wait_cmds
from flowstone._cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, common_parent, exit_code_for
from flowstone._version import __version__
from flowstone.errors import FlowStoneError
from flowstone.registry import PluginRegistry, known_provider

__all__ = ["build_parser", "main"]

_EPILOG = """\
exit codes: 0 success (a run waiting for an approval or signal included),
            1 an asset/run failed (or health/backfill failures), 2 usage or definition error.
See docs/cli.md for every command and the JSON shapes."""


def build_parser(
    registry: PluginRegistry | None = None, *, load_plugins: bool = True
) -> argparse.ArgumentParser:
    """The ``flowstone`` parser; with ``load_plugins`` also the plugins' subcommands."""
    parser = argparse.ArgumentParser(
        prog="flowstone",
        description="FlowStone: asset-first data orchestration.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flowstone {__version__}")
    parser.add_argument(
        "--debug", action="store_true", default=False, help="show the full traceback of an error"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug) to stderr"
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False,
        help="log only errors (also hides the assets' context.log lines `run` shows)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parent = common_parent()
    for module in (run_cmds, state_cmds, wait_cmds, backfill_cmd, ops_cmds):
        module.register(sub, parent)
    if load_plugins:
        _load_cli_plugins(sub, registry or PluginRegistry())
    return parser


def _load_cli_plugins(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], registry: PluginRegistry
) -> None:
    try:
        names = registry.names("flowstone.cli")
    except Exception as exc:  # a broken installation must not break the core commands
        _warn(f"cannot list flowstone.cli plugins: {type(exc).__name__}: {exc}")
        return
    for name in names:
        before, listed = set(sub.choices), len(sub._choices_actions)
        try:
            registry.create("flowstone.cli", name, sub)
        except Exception as exc:
            for added in set(sub.choices) - before:  # no half-registered commands
                del sub.choices[added]
            del sub._choices_actions[listed:]
            _warn(
                f"CLI plugin {name!r} failed to load, its commands are unavailable: "
                f"{type(exc).__name__}: {exc}"
            )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (global options take no values)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``sys.exit(main())`` in scripts)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    core = build_parser(load_plugins=False)
    command = _command_of(args_list)
    core_commands = _subcommands(core)
    parser = core if command in core_commands else build_parser()
    missing = _missing_plugin_command(command, parser)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits: --help (0) or a usage error (2)
        return _code(exc.code)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    verbose = args.verbose + getattr(args, "sub_verbose", 0)
    quiet = args.quiet or getattr(args, "sub_quiet", False)
    logs: AbstractContextManager[None] = (
        nullcontext()
        if getattr(args, "own_logging", False)
        else _logging(verbose, quiet, args.debug, asset_logs=getattr(args, "asset_logs", False))
    )
    with logs:
        try:
            return int(func(args))
        except BrokenPipeError:
            return _stdout_closed()
        except FlowStoneError as exc:
            return _fail(exc, exit_code_for(exc), args.debug)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # a bug or a plugin's error: say so, no traceback
            return _fail(exc, EXIT_FAILURE, args.debug, unexpected=True)


def _missing_plugin_command(command: str | None, parser: argparse.ArgumentParser) -> str | None:
    """Why ``command`` is unavailable, when a plugin that is not installed provides it."""
    if command is None or command in _subcommands(parser):
        return None
    provider = known_provider("flowstone.cli", command)
    if provider is None:
        return None
    return (
        f"`flowstone {command}` comes with the {provider} plugin, which is not installed. "
        f"Fix: pip install {provider}"
    )


def _stdout_closed() -> int:
    """The reader of our stdout went away (``flowstone get ... | head -1``): stop quietly.

    As a Unix tool killed by SIGPIPE: no message, exit status 128 + SIGPIPE. Later writes
    (the interpreter's final flush included) go to /dev/null instead of raising again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    finally:
        os.close(devnull)
    return _SIGPIPE_EXIT


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_USAGE


def _fail(exc: BaseException, code: int, debug: bool, *, unexpected: bool = False) -> int:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    what = f"{type(exc).__name__}: {exc}" if unexpected else str(exc)
    print(f"error: {what}", file=sys.stderr)
    if unexpected and not debug:
        print("(run with --debug for the traceback)", file=sys.stderr)
    return code


class _Formatter(logging.Formatter):
    """Log lines without tracebacks unless ``--debug``: the message says what failed."""

    def __init__(self, debug: bool) -> None:
        super().__init__("flowstone: %(levelname)s %(name)s: %(message)s")
        self._debug = debug

    def formatException(
        self,
        ei: tuple[type[BaseException], BaseException, TracebackType | None]
        | tuple[None, None, None],
    ) -> str:
        return super().formatException(ei) if self._debug else ""


_SIGPIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by SIGPIPE
_ASSET_LOGS = "flowstone.asset"  # parent of every context.log logger


@contextmanager
def _logging(verbose: int, quiet: bool, debug: bool, *, asset_logs: bool) -> Iterator[None]:
    """Log to stderr: warnings (-q errors, -v info, -vv debug), and for commands that run
    assets (``asset_logs``) their ``context.log`` lines at INFO unless ``-q``."""
    logger = logging.getLogger("flowstone")
    level = (
        logging.ERROR
        if quiet and not verbose
        else logging.DEBUG
        if verbose > 1
        else logging.INFO
        if verbose
        else logging.WARNING
    )
    show_assets = asset_logs and not quiet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(debug))
    handler.addFilter(
        lambda record: (
            record.levelno >= level
            or (show_assets and record.levelno >= logging.INFO and _is_asset_log(record.name))
        )
    )
    assets = logging.getLogger(_ASSET_LOGS)
    previous, previous_assets = logger.level, assets.level
    if verbose:
        logger.setLevel(level)
    if show_assets and assets.getEffectiveLevel() > logging.INFO:
        assets.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        assets.setLevel(previous_assets)


def _is_asset_log(name: str) -> bool:
    return name == _ASSET_LOGS or name.startswith(_ASSET_LOGS + ".")
