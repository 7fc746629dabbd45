"""Hand work to an external system and resume when it calls back with a token.

``embedding`` submits a document to an (imaginary) external embedding service and returns
``context.signal_gate(...)``: the run pauses with status ``waiting`` and holds no thread
or worker. The service later calls back — from a webhook handler, another process, or
the CLI — with the gate's token and its result; ``on_signal`` turns that payload into the
asset's value and the run resumes, so ``index_entry`` runs. A token is unguessable (256
random bits), bound to this run/asset/partition, works once, and expires after the
timeout (``on_timeout`` then decides the value, or the asset fails).

The service is reached through a resource, built in whichever process runs the asset (a
Celery worker, or this one). A real client would POST the job and its callback token over
HTTP; this stand-in drops each job as a JSON file into an *outbox* directory that the
"service" (you, the demo, the tests) reads from any process on the machine:
``$EMBEDDING_OUTBOX``, else ``embedding-outbox/`` under ``$FLOWSTONE_HOME``
(``.flowstone/``). The file holds a secret token, so it is readable by its owner only.

Partitions are document ids (no partition set declared, so any key works)::

    python examples/signal_gate.py
    flowstone signal examples/signal_gate.py:pipeline <token> --payload '{"vector": [0.1, 0.2]}'

On workers (``FLOWSTONE_EXECUTOR=celery``) the same two steps work unchanged:
``flowstone run examples/signal_gate.py:pipeline index_entry -p doc-1`` waits, and the
token is in ``embedding-outbox/doc-1.json``.
"""

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import flowstone as fs

DOCUMENTS = {
    "doc-1": "FlowStone runs assets in-process or on Celery workers.",
    "doc-2": "Signal gates pause a run until an external system calls back.",
}


def outbox() -> Path:
    """Where submitted jobs wait for the (imaginary) service."""
    configured = os.environ.get("EMBEDDING_OUTBOX")
    if configured:
        return Path(configured)
    return Path(os.environ.get("FLOWSTONE_HOME", ".flowstone")) / "embedding-outbox"


class EmbeddingService:
    """Client of an (imaginary) embedding service, used as a pipeline resource.

    ``submit`` stands in for an HTTP POST of the document and the callback token; the
    service would later call our webhook, which calls ``pipeline.signal(token, payload)``.
    """

    def submit(self, document: dict[str, Any], callback_token: str) -> Path:
        folder = outbox()
        folder.mkdir(parents=True, exist_ok=True)
        job = folder / f"{document['id']}.json"
        partial = job.with_suffix(".tmp")
        # owner-only from the first byte: the token resumes the run
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"document": document, "callback_token": callback_token}, out)
        partial.replace(job)  # the service never sees a half-written job
        return job


def take_job(doc_id: str) -> dict[str, Any]:
    """The service's side: read (and remove) the job submitted for ``doc_id``."""
    job = outbox() / f"{doc_id}.json"
    data: dict[str, Any] = json.loads(job.read_text(encoding="utf-8"))
    job.unlink()
    return data


@fs.asset
def document(context: fs.Context) -> dict[str, Any]:
    doc_id = str(context.partition)
    if doc_id not in DOCUMENTS:
        raise LookupError(f"unknown document {doc_id!r}; known: {sorted(DOCUMENTS)}")
    return {"id": doc_id, "text": DOCUMENTS[doc_id]}


def accept_embedding(context: fs.Context, payload: dict[str, Any]) -> dict[str, Any]:
    """on_signal: validate the callback's payload and make it the asset's value."""
    vector = payload.get("vector")
    if not isinstance(vector, list) or not vector:
        raise ValueError(f"callback for {context.partition} carried no vector: {payload!r}")
    return {"document": str(context.partition), "vector": [float(x) for x in vector]}


@fs.asset(on_signal=accept_embedding, requires=["embedder"])
def embedding(context: fs.Context, document: dict[str, Any]) -> fs.SignalGate:
    """Ask the service for an embedding; the run waits for its callback.

    The token goes out through ``on_token``, called once the gate is recorded: a service
    that calls back at once finds the gate waiting for it."""
    embedder = context.resources["embedder"]
    return context.signal_gate(
        timeout=timedelta(hours=1),
        on_token=lambda token: embedder.submit(document, callback_token=token),
    )


@fs.asset
def index_entry(document: dict[str, Any], embedding: dict[str, Any]) -> dict[str, Any]:
    """What would be written to a vector index."""
    return {"id": document["id"], "dimensions": len(embedding["vector"]),
            "preview": document["text"][:30]}


pipeline = fs.Pipeline(
    "signal_gate",
    [document, embedding, index_entry],
    resources={"embedder": fs.Resource(EmbeddingService)},
)

if __name__ == "__main__":
    result = pipeline.run("index_entry", partition="doc-1", force=True)
    job = take_job("doc-1")
    print(f"run {result.run_id} is {result.status}: doc-1 was submitted to the service")
    print(f"callback token: {job['callback_token']}")
    print("resume the run as the service would, with:")
    print(f"    flowstone signal examples/signal_gate.py:pipeline {job['callback_token']} "
          """--payload '{"vector": [0.1, 0.2, 0.3]}'""")
