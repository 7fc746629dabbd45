"""Hand work to an external system and resume when it calls back with a token.

``embedding`` submits a document to an (imaginary) external embedding service and returns
``context.signal_gate(...)``: the run pauses with status ``waiting`` and holds no thread
or worker. The service later calls back — from a webhook handler, another process, or
the CLI — with the gate's token and its result; ``on_signal`` turns that payload into the
asset's value and the run resumes, so ``index_entry`` runs. A token is unguessable (256
random bits), bound to this run/asset/partition, works once, and expires after the
timeout (``on_timeout`` then decides the value, or the asset fails).

Partitions are document ids (no partition set declared, so any key works)::

    python examples/signal_gate.py
    flowstone signal examples/signal_gate.py:pipeline <token> --payload '{"vector": [0.1, 0.2]}'
"""

from datetime import timedelta
from typing import Any

import flowstone as fs

DOCUMENTS = {
    "doc-1": "FlowStone runs assets in-process or on Celery workers.",
    "doc-2": "Signal gates pause a run until an external system calls back.",
}


class EmbeddingService:
    """Client of an (imaginary) embedding service, used as a pipeline resource.

    ``submit`` stands in for an HTTP POST; the service would later call our webhook,
    which calls ``pipeline.signal(token, payload)``. This stand-in only records the jobs,
    so the demo (and the tests) can play the service's part.
    """

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str]] = []  # (document id, callback token)

    def submit(self, document: dict[str, Any], callback_token: str) -> None:
        self.submitted.append((document["id"], callback_token))


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
    """Ask the service for an embedding; the run waits for its callback."""
    gate = context.signal_gate(timeout=timedelta(hours=1))
    context.resources["embedder"].submit(document, callback_token=gate.token)
    return gate


@fs.asset
def index_entry(document: dict[str, Any], embedding: dict[str, Any]) -> dict[str, Any]:
    """What would be written to a vector index."""
    return {"id": document["id"], "dimensions": len(embedding["vector"]),
            "preview": document["text"][:30]}


embedder = EmbeddingService()
pipeline = fs.Pipeline(
    "signal_gate", [document, embedding, index_entry], resources={"embedder": embedder}
)

if __name__ == "__main__":
    result = pipeline.run("index_entry", partition="doc-1", force=True)
    doc_id, token = embedder.submitted[-1]
    print(f"run {result.run_id} is {result.status}: {doc_id} was submitted to the service")
    print(f"callback token: {token}")
    print("resume the run as the service would, with:")
    print(f"    flowstone signal examples/signal_gate.py:pipeline {token} "
          """--payload '{"vector": [0.1, 0.2, 0.3]}'""")
