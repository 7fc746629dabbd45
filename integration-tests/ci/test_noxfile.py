"""The CI command itself: ``nox -s tests`` runs every step and fails at the end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HARNESS = """
import importlib.util
from pathlib import Path

import nox

spec = importlib.util.spec_from_file_location("repo_noxfile", {noxfile!r})
repo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repo)


@nox.session(python=False, name="three_suites")
def three_suites(session):
    failed = []
    out = Path({out!r})
    repo._step(session, failed, "suite a", "python", "-c", "raise SystemExit(3)")
    repo._step(session, failed, "suite b", "python", "-c", f"open({{str(out)!r}}, 'w')")
    repo._step(session, failed, "suite c", "python", "-c", "raise SystemExit(1)")
    repo.fail_if_any(session, failed)
"""


def nox_run(noxfile: Path, session: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(noxfile), "-s", session],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=noxfile.parent,
    )


def test_a_failing_step_does_not_stop_the_ones_after_it(tmp_path: Path) -> None:
    out = tmp_path / "b-ran"
    noxfile = tmp_path / "noxfile.py"
    noxfile.write_text(
        textwrap.dedent(HARNESS.format(noxfile=str(ROOT / "noxfile.py"), out=str(out))),
        encoding="utf-8",
    )
    done = nox_run(noxfile, "three_suites")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert out.exists(), "the step after a failed one must still run"
    assert "2 step(s) failed: suite a; suite c" in output


def test_the_tests_session_runs_every_integration_suite() -> None:
    spec_text = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    assert "for suite in integration_suites():" in spec_text
    import importlib.util

    spec = importlib.util.spec_from_file_location("repo_noxfile_list", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    repo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repo)
    expected = sorted(
        str(p.parent.relative_to(ROOT))
        for p in {t.parent / "x" for t in (ROOT / "integration-tests").glob("*/test_*.py")}
    )
    assert repo.integration_suites() == expected
    assert "integration-tests/ci" in expected
