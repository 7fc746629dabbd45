"""Durable FlowStone scatter on Celery + Postgres.

Installing this plugin makes ``CeleryScatterCoordinator`` the scatter coordinator of every
pipeline whose executor is Celery (entry point ``flowstone.scatter_coordinators: celery``);
its tasks register on the worker app through ``flowstone.celery_tasks``. Importing this
package has no side effects.
"""

from __future__ import annotations

from flowstone_scatter._version import __version__
from flowstone_scatter.coordinator import CeleryScatterCoordinator
from flowstone_scatter.status import ScatterStatus, retry_failed, scatter_status

__all__ = ["CeleryScatterCoordinator", "ScatterStatus", "__version__", "retry_failed",
           "scatter_status"]
