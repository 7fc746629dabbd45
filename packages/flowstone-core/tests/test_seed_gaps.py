"""Seed defects whose earlier tests let a reintroduced defect pass (issue 16).

See /work/shared/seeds/ (001 sections 1 and 2, 002 section 5) and DESIGN.md section 8. Each
test here was run against the defect put back by hand and failed (the mutation table is in
the issue's closing note).
"""

from __future__ import annotations

import base64
import gc
import logging
import os
import random
import threading
import weakref
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import Counter, PipelineFactory

import flowstone as fs
import flowstone.backfill as backfill_module

# --- bounded backfill parallelism, whatever the machine ----------------------------------


def test_seed_backfill_cap_holds_on_a_sixteen_cpu_machine(
    make_pipeline: PipelineFactory, counter: Counter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 001 section 2: ``parallel`` is capped (2 x CPUs, at least 4). The CPU count is
    pinned to 16 so the cap (32) is below what is asked for on any machine; the measured
    peak of partitions running at once is what is checked, not ``result.parallel``."""
    monkeypatch.setattr(backfill_module.os, "cpu_count", lambda: 16)
    cap = backfill_module.max_backfill_parallelism()
    assert cap == 32
    days = fs.DailyPartitions("2024-01-01", "2024-02-09")  # 40 partitions
    over_cap = threading.Event()

    @fs.asset(partitions=days)
    def daily(context: fs.Context) -> int:
        counter.enter()
        try:
            if counter.active > cap:
                over_cap.set()
            # hold the slot until the cap is exceeded, or long enough for every running
            # partition to have started: the peak then shows how many ran at once
            over_cap.wait(0.5)
            return int(context.partition.day)
        finally:
            counter.leave()

    p = make_pipeline([daily])
    result = p.backfill("daily", parallel=1000, timeout=30)
    assert not over_cap.is_set()
    assert counter.peak <= cap
    assert len(result.succeeded) == 40 and not result.failed, result.errors
    assert counter.peak > 4  # really parallel (not a cap that is simply always small)


# --- gate tokens come from the OS's secure random source, 256 bits ------------------------


def test_seed_gate_token_is_256_bits_from_the_secure_random_source(
    make_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 001 section 5: a token is unguessable only if it is drawn from the OS's CSPRNG
    with enough entropy. Every read of that source (``os.urandom`` and the one behind
    ``secrets``/``random.SystemRandom``) is recorded; the token must be one of them,
    at least 32 bytes long, base64url-encoded behind the ``fsg_`` prefix."""
    drawn: list[bytes] = []
    real = os.urandom

    def recording(n: int) -> bytes:
        value = real(n)
        drawn.append(value)
        return value

    monkeypatch.setattr(os, "urandom", recording)
    monkeypatch.setattr(random, "_urandom", recording)
    tokens: list[str] = []

    @fs.asset(on_signal=lambda context, payload: payload)
    def gated(context: fs.Context) -> fs.SignalGate:
        gate = context.signal_gate(timeout=timedelta(minutes=5))
        tokens.append(gate.token)
        return gate

    p = make_pipeline([gated])
    assert p.run("gated").status == "waiting"
    [token] = tokens
    assert token.startswith("fsg_")
    secret = token[len("fsg_"):]
    raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    assert raw in drawn, "the token is not a value read from the secure random source"
    assert len(raw) * 8 >= 256


# --- nothing global is left behind by many pipelines -------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_seed_no_global_state_left_by_many_pipelines(tmp_path: Path) -> None:
    """Seed 001 sections 1 and 8 (persistent_term / atom growth): building, running and
    closing many pipelines leaves no thread, no open file, no logging handler and no
    reference to any of them behind."""
    flowstone_loggers = [logging.getLogger("flowstone"), logging.getLogger()]
    handlers = [len(lg.handlers) for lg in flowstone_loggers]
    teardowns: list[int] = []

    def build(i: int) -> fs.Pipeline:
        @fs.asset(name=f"value_{i}", requires=["conn"])
        def value(context: fs.Context) -> int:
            return int(context.resources["conn"]) + i

        store = f"sqlite:///{tmp_path / f'p{i}.db'}" if i % 2 else "memory://"
        return fs.Pipeline(f"many_{i}", [value], store=store, resources={
            "conn": fs.Resource(setup=lambda: 1, teardown=lambda c: teardowns.append(c))})

    def cycle(n: int, first: int) -> list[weakref.ref[fs.Pipeline]]:
        refs = []
        for i in range(first, first + n):
            p = build(i)
            assert p.run(f"value_{i}").value == i + 1
            p.close()
            refs.append(weakref.ref(p))
            del p
        return refs

    cycle(2, 0)  # warm up lazily created, process-wide things (imports, codecs)
    gc.collect()
    threads, fds = threading.active_count(), _open_fds()
    refs = cycle(40, 2)
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert threading.active_count() == threads, threading.enumerate()
    assert _open_fds() == fds
    assert [len(lg.handlers) for lg in flowstone_loggers] == handlers
    assert len(teardowns) == 42

