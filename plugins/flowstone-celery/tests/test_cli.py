from __future__ import annotations

import argparse

import pytest

from flowstone_celery.cli import main, register


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowstone")
    register(p.add_subparsers(dest="command"))
    return p


def test_worker_subcommand_parses_its_options() -> None:
    args = parser().parse_args(["worker", "--pipeline", "a.py:pipeline", "--pipeline", "m:p",
                                "--concurrency", "3", "--queues", "q1,q2", "--no-sweeper"])
    assert args.pipeline == ["a.py:pipeline", "m:p"]
    assert args.concurrency == 3 and args.queues == "q1,q2" and args.no_sweeper
    assert callable(args.func)


def test_worker_without_pipelines_exits_2_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"]) == 2
    assert "--pipeline" in capsys.readouterr().err


def test_worker_with_a_missing_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--pipeline", "does/not/exist.py:pipeline"]) == 2
    assert "does not exist" in capsys.readouterr().err
