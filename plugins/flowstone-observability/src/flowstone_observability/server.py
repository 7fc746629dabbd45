"""The HTTP endpoint: ``GET /metrics`` (Prometheus text format) and ``GET /healthz`` (JSON).

:class:`MetricsServer` is a small threaded stdlib HTTP server. It binds ``127.0.0.1`` unless
told otherwise, serves from a daemon thread, and is stopped by :meth:`MetricsServer.close`
(or by leaving its ``with`` block). ``/healthz`` answers 200 when every check passes and
503 otherwise, with the same JSON ``flowstone health --json`` prints; health results are
reused for ``health_cache_seconds`` so a tight probe interval does not ping the broker on
every request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flowstone.errors import UsageError

__all__ = ["DEFAULT_HOST", "MetricsServer"]

log = logging.getLogger("flowstone.observability")

DEFAULT_HOST: Final = "127.0.0.1"


class MetricsServer:
    """Serves ``registry`` at ``/metrics`` and ``health()`` at ``/healthz``.

    Args:
        registry: what ``/metrics`` exports.
        health: returns ``(ok, json_document)``; without it ``/healthz`` says only that
            the process is up.
        host: the address to bind (default ``127.0.0.1``).
        port: the TCP port; ``0`` picks a free one (see :attr:`port`).
        health_cache_seconds: how long a health result is reused.

    Raises:
        UsageError: the port is out of range or cannot be bound.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        health: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
        host: str = DEFAULT_HOST,
        port: int = 0,
        health_cache_seconds: float = 5.0,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise UsageError(f"metrics port must be 0-65535, got {port!r}")
        self.registry = registry
        self._health = health
        self._cache_for = float(health_cache_seconds)
        self._cached: tuple[float, bool, bytes] | None = None
        self._lock = threading.Lock()
        try:
            self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise UsageError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}. Fix: pick a "
                "free port with --metrics-port"
            ) from exc
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name=f"flowstone-metrics-{self.port}", daemon=True)
        self._thread.start()
        log.info("serving /metrics and /healthz on http://%s:%d", host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    def healthz(self) -> tuple[bool, bytes]:
        if self._health is None:
            return True, b'{"ok": true, "checks": []}'
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._cache_for:
                ok, doc = self._health()
                self._cached = (now, ok, json.dumps(doc).encode())
            return self._cached[1], self._cached[2]

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "flowstone-metrics"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, server.metrics())
                elif path == "/healthz":
                    ok, body = server.healthz()
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain; charset=utf-8",
                               b"not found: use /metrics or /healthz\n")
            except Exception as exc:  # a failing collector must not kill the server
                log.exception("serving %s failed", path)
                self._send(500, "text/plain; charset=utf-8",
                           f"error: {type(exc).__name__}\n".encode())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics server: " + format, *args)

    return Handler
