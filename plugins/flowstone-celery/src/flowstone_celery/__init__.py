"""FlowStone on Celery: a durable, queue-based executor and the worker that serves it.

Importing this package has no side effects: nothing connects and nothing reads the
environment. FlowStone finds the executor through the ``celery`` entry point in
``flowstone.executors`` and the ``flowstone worker`` command through ``flowstone.cli``.
For the plain ``celery`` command use the app ``flowstone_celery.worker_app``.
"""

from __future__ import annotations

from flowstone_celery._version import __version__
from flowstone_celery.app import FlowstoneCelery, make_app
from flowstone_celery.executor import CeleryExecutor
from flowstone_celery.messages import MessageError, StepMessage, parse_message
from flowstone_celery.settings import CelerySettings, load_settings
from flowstone_celery.sweeper import Sweeper, SweepReport

__all__ = [
    "CeleryExecutor",
    "CelerySettings",
    "FlowstoneCelery",
    "MessageError",
    "StepMessage",
    "SweepReport",
    "Sweeper",
    "__version__",
    "load_settings",
    "make_app",
    "parse_message",
]
