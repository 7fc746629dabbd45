"""Every session CI and developers run.

    nox -s tests          lint + typecheck + every package's unit tests + integration tests (CI)
    nox -s build          sdist + wheel of every package, twine check, each installed from
                          the wheels alone into a fresh venv and smoke-tested (also in tests)
    nox -s core_isolated  core alone in a bare venv: zero third-party packages, quickstart runs
    nox -s lint           ruff
    nox -s typecheck      mypy --strict
    nox -s docs           build the docs site strictly and check docs against the code
    nox -s faults         the fault-injection suite alone (also part of tests)
    nox -s bench          every benchmark in bench/ (prints one JSON line each)

Integration tests need PostgreSQL, Redis and RabbitMQ on 127.0.0.1 (see README); with
CI=true a missing service fails the run instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import nox
import nox.command

ROOT = Path(__file__).parent
CORE = "packages/flowstone-core"
PLUGINS = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / "plugins").glob("flowstone-*")
    if (p / "pyproject.toml").exists()
)
PACKAGES = [CORE, *PLUGINS]
TEST_TOOLS = [
    "pytest>=8",
    "hypothesis>=6",
    "moto[server]>=5",
    "pytest-timeout>=2",
    "nox>=2024.3",  # integration-tests/ci drives nox sessions
    "httpx>=0.27",  # FastAPI's TestClient (flowstone-ui unit tests)
    "schemathesis>=4",  # flowstone-ui's JSON API against its OpenAPI document
    "playwright>=1.40",  # flowstone-ui browser tests; drives Debian's chromium, no download
]
LINT_TOOLS = ["ruff>=0.6"]
TYPE_TOOLS = ["mypy>=1.10"]

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def _install_all(session: nox.Session, *extra: str) -> None:
    args: list[str] = []
    for pkg in PACKAGES:
        # optional extras whose code paths the package's tests cover
        extras = {"io-postgres": "[arrow]", "io-s3": "[pandas]"}.get(pkg.split("-", 1)[-1], "")
        args += ["-e", f"{pkg}{extras}"]
    session.install(*args, *extra)


def _src_dirs() -> list[str]:
    return [f"{pkg}/src" for pkg in PACKAGES]


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", *LINTED)


@nox.session
def typecheck(session: nox.Session) -> None:
    _install_all(session, *TYPE_TOOLS)
    session.run("mypy", *_src_dirs())


@nox.session
def tests(session: nox.Session) -> None:
    """What CI runs: lint, typecheck, unit tests of every package, integration tests.

    Every step runs even when an earlier one failed; the session fails at the end and
    lists what failed, so one broken suite never hides the results of the others.
    """
    _install_all(session, *TEST_TOOLS, *LINT_TOOLS, *TYPE_TOOLS)
    failed: list[str] = []
    _step(session, failed, "lint", "ruff", "check", *LINTED)
    _step(session, failed, "typecheck", "mypy", *_src_dirs())
    # one pytest process per package: test modules may share basenames across packages
    for pkg in PACKAGES:
        if (ROOT / pkg / "tests").is_dir():
            _step(
                session, failed, f"unit tests of {pkg}", *PYTEST, f"{pkg}/tests", *session.posargs
            )
    # one process per suite too: each suite's workers and connections end with it, so
    # suites never add up against the server's connection limit
    for suite in integration_suites():
        integration_suite(session, failed, suite)
    build_and_smoke(session, failed)
    fail_if_any(session, failed)


@nox.session
def faults(session: nox.Session) -> None:
    """The fault-injection suite (integration-tests/faults, issue 11) alone, at CI's sizes.

    Real workers SIGKILLed, paused and drained, Postgres connections terminated, the broker
    flushed, every message sent twice, a skewed clock, competing daemons, and a soak. Needs
    the services of the other integration suites; ``tests`` runs it too.
    """
    _install_all(session, *TEST_TOOLS)
    failed: list[str] = []
    integration_suite(session, failed, "integration-tests/faults")
    fail_if_any(session, failed)


PYTEST = ("pytest", "-q", "-p", "no:cacheprovider")
# What a suite runs with in CI beyond CI=true; a variable already set wins. The fault
# suite's defaults are sized for a developer's laptop; CI uses the 20,000-item
# scatters (integration-tests/faults/faults_it.py lists its variables).
SUITE_ENV = {
    "integration-tests/faults": {"FLOWSTONE_FAULTS_SCATTER_ITEMS": "20000"},
}


def integration_suite(session: nox.Session, failed: list[str], suite: str) -> None:
    """Run one integration suite in a pytest process of its own (see :func:`_step`)."""
    env = {"CI": os.environ.get("CI", "")}
    env.update({k: os.environ.get(k, v) for k, v in SUITE_ENV.get(suite, {}).items()})
    _step(session, failed, f"integration suite {suite}", *PYTEST, suite, *session.posargs, env=env)


LINTED = (*PACKAGES, "integration-tests", "examples", "bench", "noxfile.py", ".ci")


def integration_suites() -> list[str]:
    """Every directory of integration-tests/ that holds tests, in name order."""
    return [
        str(suite.relative_to(ROOT))
        for suite in sorted(p for p in (ROOT / "integration-tests").iterdir() if p.is_dir())
        if any(suite.glob("test_*.py"))
    ]


def _step(session: nox.Session, failed: list[str], what: str, *args: str, **kwargs: Any) -> None:
    """Run one command; on failure note ``what`` in ``failed`` and carry on."""
    try:
        session.run(*args, **kwargs)
    except nox.command.CommandFailed:
        session.log(f"FAILED: {what} (carrying on; the session fails at the end)")
        failed.append(what)


def fail_if_any(session: nox.Session, failed: list[str]) -> None:
    """Fail the session naming every step that failed (nothing when all passed)."""
    if failed:
        session.error(f"{len(failed)} step(s) failed: " + "; ".join(failed))


BUILD_TOOLS = ["hatch>=1.9", "twine>=5"]


@nox.session
def build(session: nox.Session) -> None:
    """Build every package, check the metadata, install each from the wheels alone, smoke it.

    Also run by ``tests``. For each package: an sdist and a wheel with hatch, ``twine check``
    of all of them, then a fresh venv per package with ``flowstone-core`` and that package
    (and the FlowStone packages it depends on) installed from the built wheels only -- their
    third-party dependencies from the package index -- and ``.ci/smoke.py`` run in it from
    outside the repository: the quickstart for the core, ``flowstone db upgrade --create``
    for Postgres, a worker round trip for Celery, and every plugin's entry points loaded.
    """
    failed: list[str] = []
    build_and_smoke(session, failed)
    fail_if_any(session, failed)


def build_and_smoke(session: nox.Session, failed: list[str]) -> None:
    """The ``build`` session's steps, noting failures in ``failed``."""
    session.install(*BUILD_TOOLS)
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    built: list[str] = []
    for pkg in PACKAGES:
        with session.chdir(ROOT / pkg):
            before = set(dist.iterdir())
            _step(
                session,
                failed,
                f"build {pkg}",
                "hatch",
                "build",
                "-t",
                "sdist",
                "-t",
                "wheel",
                str(dist),
            )
            if len(set(dist.iterdir()) - before) == 2:
                built.append(pkg)
    _step(
        session,
        failed,
        "twine check",
        "twine",
        "check",
        "--strict",
        *map(str, sorted(dist.iterdir())),
    )
    names = {pkg: _project_name(pkg) for pkg in built}
    for pkg in built:
        _step_call(session, failed, f"smoke {names[pkg]}", _smoke, session, tmp, dist, names[pkg])


def _project_name(pkg: str) -> str:
    text = (ROOT / pkg / "pyproject.toml").read_text(encoding="utf-8")
    return str(tomllib.loads(text)["project"]["name"])


def _ours(name: str) -> list[str]:
    """``name`` and the FlowStone distributions it depends on, recursively."""
    by_name = {_project_name(pkg): pkg for pkg in PACKAGES}
    order, todo = [], [name]
    while todo:
        current = todo.pop()
        if current in order:
            continue
        order.append(current)
        project = tomllib.loads((ROOT / by_name[current] / "pyproject.toml").read_text("utf-8"))
        for requirement in project["project"].get("dependencies", []):
            dep = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
            if dep in by_name:
                todo.append(dep)
    return order


def _smoke(session: nox.Session, tmp: Path, dist: Path, name: str) -> None:
    venv = tmp / f"venv-{name}"
    session.run(sys.executable, "-m", "venv", "--clear", str(venv), external=True)
    py = str(venv / "bin" / "python")
    wheels = [str(next(dist.glob(f"{n.replace('-', '_')}-*.whl"))) for n in _ours(name)]
    # ours from the wheels only (no index can substitute one), then their dependencies
    session.run(py, "-m", "pip", "install", "--quiet", "--no-deps", *wheels, external=True)
    session.run(py, "-m", "pip", "install", "--quiet", *wheels, external=True)
    with session.chdir(tmp):
        session.run(
            py,
            str(ROOT / ".ci" / "smoke.py"),
            name,
            str(ROOT / "examples"),
            external=True,
            env={"PYTHONPATH": ""},
        )


def _step_call(session: nox.Session, failed: list[str], what: str, fn: Any, *args: Any) -> None:
    """Like :func:`_step` for a Python function that runs commands."""
    try:
        fn(*args)
    except nox.command.CommandFailed:
        session.log(f"FAILED: {what} (carrying on; the session fails at the end)")
        failed.append(what)


@nox.session(python=False)
def core_isolated(session: nox.Session) -> None:
    """Install flowstone-core alone into a bare venv and run the quickstart."""
    tmp = Path(session.create_tmp())
    venv = tmp / "bare-venv"
    session.run("python", "-m", "venv", "--clear", str(venv))
    py = str(venv / "bin" / "python")
    session.run(py, "-m", "pip", "install", "--quiet", CORE)
    frozen = session.run(py, "-m", "pip", "list", "--format=freeze", silent=True) or ""
    third_party = [
        line
        for line in str(frozen).splitlines()
        if line and not line.lower().startswith(("flowstone-core", "pip=", "setuptools=", "wheel="))
    ]
    if third_party:
        session.error(f"flowstone-core pulled in third-party packages: {third_party}")
    home = tmp / "home"
    session.run(
        str(venv / "bin" / "flowstone"),
        "run",
        str(ROOT / "examples" / "quickstart.py") + ":pipeline",
        "total",
        "--json",
        env={"FLOWSTONE_HOME": str(home)},
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs strictly and check that they match the code."""
    _install_all(session, "mkdocs>=1.6", *TEST_TOOLS)
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site")
    )
    session.run("pytest", "-q", "-p", "no:cacheprovider", f"{CORE}/tests/test_docs.py")


# The peers the benchmarks measure FlowStone against (never runtime dependencies of ours);
# their versions and configuration are recorded in docs/performance.md ("Peers").
BENCH_PEERS = [
    "dagster>=1.8",  # bench/inprocess.py
    "prefect>=3.9,<4",  # bench/inprocess.py, in-process with a temporary PREFECT_HOME
    "dbos>=3.4,<4",  # bench/celery_runtime.py and bench/parallel.py, queues on the same Postgres
]
BENCH_TOOLS = ["moto[server]>=5"]  # bench/s3_reader.py's local S3 server


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark; each prints one JSON line with its ratios."""
    _install_all(session, *BENCH_PEERS, *BENCH_TOOLS)
    for script in sorted((ROOT / "bench").glob("*.py")):
        if not script.name.startswith("_"):  # _cluster.py etc. are helpers, not benchmarks
            session.run("python", str(script), *session.posargs)
