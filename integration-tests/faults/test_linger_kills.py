"""A client killed while its dispatch lingers (``flowstone_celery.lingering``).

Behind a queue that holds a message for every slot, a client's ``run(wait=False)`` commits
the run and lets its ready steps wait up to ``FLOWSTONE_DISPATCH_LINGER_SECONDS`` for the
next runs' steps. The client here starts one run (published at once: the queue was
empty), then a second one behind it, whose steps linger (30 s), and dies at once
(``os._exit``: no exit handler publishes them). The second run's message is never sent;
its steps are ``ready`` in the store, so the sweeper re-sends them after
``FLOWSTONE_RECOVER_AFTER`` and both runs succeed, every step run and recorded once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from faults_it import SETTLE, Workers, client, sql

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
JOINS_SPEC = f"{HERE / 'pipelines' / 'fault_joins.py'}:pipeline"

CLIENT = textwrap.dedent("""
    import os, sys, time
    from fault_joins import make_pipeline
    from flowstone_celery.packing import BACKLOG_SECONDS

    pipeline = make_pipeline()
    first = pipeline.run("parent", sys.argv[1], force=True, wait=False)  # queue empty: sent
    time.sleep(BACKLOG_SECONDS * 2)  # the queue length is read again: 1 message, 1 slot
    second = pipeline.run("parent", sys.argv[2], force=True, wait=False)  # lingers
    assert len(pipeline.executor._linger) == 3, "the second run's steps should linger"
    print(first.run_id, second.run_id, flush=True)
    os._exit(0)  # dies like a SIGKILL: no exit handler publishes what lingers
""")


def test_client_killed_while_its_dispatch_lingers(
    workers: Workers, database_url: str, queue: str
) -> None:
    from fault_joins import BRANCHES, make_pipeline

    workers.specs = [JOINS_SPEC]
    keys = [f"linger_{uuid.uuid4().hex[:6]}_{i}" for i in range(2)]
    env = {**workers.env, "FLOWSTONE_WORKER_SLOTS": "1",
           "FLOWSTONE_DISPATCH_LINGER_SECONDS": "30",
           "PYTHONPATH": os.pathsep.join([str(HERE / "pipelines"), workers.env["PYTHONPATH"]])}
    done = subprocess.run([sys.executable, "-c", CLIENT, *keys], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_ids = done.stdout.split()
    with client(make_pipeline()) as pipeline:
        # one message in the queue: the first run's; the second's steps are ready, unsent
        steps = {s.asset: s.state for s in pipeline.store.list_steps(run_ids[1])}
        assert steps == {**dict.fromkeys(BRANCHES, "ready"), "parent": "pending"}
        workers.start_many("w1", concurrency=1)
        runs = pipeline.wait(run_ids, timeout=SETTLE * 2)
        assert [r.status for r in runs] == ["succeeded"] * 2, workers.logs()
        mats = sql(database_url, "SELECT run_id, asset, attempt FROM flowstone.materializations "
                   "WHERE run_id = ANY($1)", run_ids)  # fmt: skip
        assert Counter((m["run_id"], m["asset"], m["attempt"]) for m in mats) == Counter(
            {(r, a, 1): 1 for r in run_ids for a in (*BRANCHES, "parent")}
        )
        audit = sql(database_url, "SELECT run_id, asset FROM public.fault_audit "
                    "WHERE run_id = ANY($1)", run_ids)  # fmt: skip
        ran: Any = Counter((a["run_id"], a["asset"]) for a in audit)
        assert ran == Counter({(r, a): 1 for r in run_ids for a in (*BRANCHES, "parent")})
        assert [pipeline.get("parent", k)["v"] for k in keys] == [6, 6]
