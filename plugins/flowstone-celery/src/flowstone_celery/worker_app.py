"""The app for the plain ``celery`` command::

    FLOWSTONE_PIPELINES=etl.py:pipeline celery -A flowstone_celery.worker_app worker

This module is the one place where importing has an effect: Celery imports it to get
``app``, which is built from the ``FLOWSTONE_*`` environment at that moment. Pipelines are
loaded later, when the worker starts (see :class:`flowstone_celery.worker.FlowstoneStep`).
Nothing else in :mod:`flowstone_celery` imports this module.
"""

from __future__ import annotations

from flowstone_celery.app import make_app
from flowstone_celery.worker import install_step

__all__ = ["app"]

app = install_step(make_app())
