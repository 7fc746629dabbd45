"""flowstone-ui: a web UI and JSON API for FlowStone pipelines.

``flowstone ui FILE.py:PIPELINE`` serves it; :func:`create_app` builds the FastAPI app for
embedding or tests. The reads behind the pages are the :class:`UIQueries` protocol
(keyset-paginated and time-bounded), implemented for the SQLite and Postgres stores and,
through the ``RunStore`` protocol, for any other.
"""

from flowstone_ui._version import __version__
from flowstone_ui.app import create_app
from flowstone_ui.queries import RunFilter, UIQueries, queries_for

__all__ = ["RunFilter", "UIQueries", "__version__", "create_app", "queries_for"]
