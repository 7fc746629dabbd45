"""Fixtures for the S3 integration tests: the Celery suite's throwaway database and broker
fixtures, an S3-compatible server (moto in server mode on loopback) with a bucket of this
session, and worker processes that serve ``pipelines/s3_it.py``."""

from __future__ import annotations

import importlib.util
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CELERY_IT = Path(__file__).parent.parent / "celery"
sys.path.insert(0, str(CELERY_IT))

from celery_it import Cluster  # noqa: E402

_spec = importlib.util.spec_from_file_location("celery_it_conftest", CELERY_IT / "conftest.py")
assert _spec is not None and _spec.loader is not None
_celery_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_celery_conftest)
database_url = _celery_conftest.database_url
redis_url = _celery_conftest.redis_url
state_dir = _celery_conftest.state_dir
client_env = _celery_conftest.client_env
SESSION = _celery_conftest.SESSION

SPEC = f"{Path(__file__).parent / 'pipelines' / 's3_it.py'}:pipeline"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "flowstone-it",
    "AWS_SECRET_ACCESS_KEY": "flowstone-it-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_env(client_env: str) -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 and a bucket of this session, exported to this
    process (the client) and handed to the workers; stopped and emptied at the end."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        _celery_conftest.unavailable("moto[server] and boto3", "pip install 'moto[server]'", exc)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        **CREDENTIALS,
        "FLOWSTONE_IT_S3": f"http://127.0.0.1:{port}",
        "FLOWSTONE_S3_BUCKET": f"fs-it-{SESSION}",
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            s3 = boto3.client("s3", endpoint_url=env["FLOWSTONE_IT_S3"])
            s3.create_bucket(Bucket=env["FLOWSTONE_S3_BUCKET"])
            yield env
    finally:
        server.stop()


@pytest.fixture
def s3(s3_env: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_env["FLOWSTONE_IT_S3"])


class S3Cluster(Cluster):
    """Workers serving the S3 pipeline on a queue of their own."""

    def start(self, name: str, *, concurrency: int = 2, **env: str) -> subprocess.Popen[bytes]:
        log = self.state_dir / f"{self.queue}-{name}.log"
        cmd = [sys.executable, "-m", "flowstone", "worker", "--pipeline", SPEC,
               "--concurrency", str(concurrency), "--hostname", f"{name}-{self.queue}@%h",
               "--", "--without-mingle", "--without-gossip"]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env={**self.env, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        return proc


@pytest.fixture
def load_pipeline() -> Iterator[Any]:
    """Loads the S3 pipeline as a client of the given queue's workers; closes it after."""
    from flowstone.loading import load_pipeline as load
    from flowstone_celery import CeleryExecutor, load_settings

    loaded: list[Any] = []

    def make(queue: str) -> Any:
        pipeline = load(SPEC)
        pipeline.use_executor(CeleryExecutor(load_settings(queue=queue)))
        loaded.append(pipeline)
        return pipeline

    yield make
    for pipeline in loaded:
        pipeline.close()


@pytest.fixture
def cluster(client_env: str, database_url: str, redis_url: str, state_dir: Path,
            s3_env: dict[str, str]) -> Iterator[S3Cluster]:
    """Workers on a queue of their own (each test starts the ones it needs)."""
    c = S3Cluster(redis_url, f"fs-it-s3-{uuid.uuid4().hex[:8]}", database_url, state_dir)
    c.env.update(s3_env)
    try:
        yield c
    finally:
        c.stop_all()
        c.purge()
