"""Which live workers serve which pipelines: the ``flowstone_pipelines`` control command.

Every FlowStone worker answers the Celery remote-control command ``flowstone_pipelines``
with ``{"pipelines": [names], "queues": [names]}`` (registered by
:func:`register_control_command` when the app is built). :func:`workers_serving`
broadcasts it and counts the workers that serve a pipeline *from a given queue* (a worker
of another queue on the same broker would never see the steps);
:meth:`CeleryExecutor.serving <flowstone_celery.CeleryExecutor.serving>` (the core's
:class:`~flowstone.protocols.WorkerPresence` capability) is how ``flowstone run``
learns within seconds that nobody will take its steps. ``flowstone health`` (with
flowstone-observability) asks the same command.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["CONTROL_COMMAND", "register_control_command", "served_by", "workers_serving"]

log = logging.getLogger("flowstone.celery")

CONTROL_COMMAND: Final = "flowstone_pipelines"


def register_control_command() -> None:
    """Teach this process's workers ``flowstone_pipelines`` (idempotent; Celery keeps
    control commands in one registry per process)."""
    from celery.worker.control import Panel, control_command

    if CONTROL_COMMAND in Panel.data:
        return

    def flowstone_pipelines(state: Any) -> dict[str, list[str]]:
        """The FlowStone pipelines this worker serves, and the queues it consumes."""
        pipelines = getattr(state.consumer.app, "pipelines", None) or {}
        consumer = state.consumer.task_consumer
        queues = sorted(q.name for q in consumer.queues) if consumer is not None else []
        return {"pipelines": sorted(pipelines), "queues": queues}

    flowstone_pipelines.__name__ = CONTROL_COMMAND
    control_command()(flowstone_pipelines)


def served_by(
    replies: list[dict[str, Any]], queue: str | None = None
) -> dict[str, list[str] | None]:
    """``{worker: pipeline names}`` from a ``flowstone_pipelines`` broadcast's replies
    (None for a worker that answered without naming its pipelines). With ``queue``, a
    worker that does not consume it serves nothing from it, and one that does not say
    which queues it consumes (an older worker) is unknown (None)."""
    out: dict[str, list[str] | None] = {}
    for reply in replies:
        for host, answer in reply.items():
            names = answer.get("pipelines") if isinstance(answer, dict) else None
            if queue is not None and isinstance(names, list):
                queues = answer.get("queues")
                names = (names if queue in queues else []) if isinstance(queues, list) else None
            out[host] = sorted(str(n) for n in names) if isinstance(names, list) else None
    return out


def workers_serving(
    app: Celery, pipeline: str, queue: str | None = None, *, timeout: float = 1.0
) -> int | None:
    """How many workers answering within ``timeout`` seconds serve ``pipeline`` (from
    ``queue``, when given).

    None when it cannot be told: the broker is unreachable, or no worker serves it but
    some answered without naming their pipelines (an older worker).
    """
    try:
        replies = app.control.broadcast(CONTROL_COMMAND, reply=True, timeout=timeout) or []
    except Exception as exc:  # the broker is down: the dispatch said so already
        log.debug("asking the workers which pipelines they serve failed: %s", exc)
        return None
    served = served_by(replies, queue)
    count = sum(1 for names in served.values() if names is not None and pipeline in names)
    if count == 0 and any(names is None for names in served.values()):
        return None
    return count
