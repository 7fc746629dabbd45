"""A loopback HTTP proxy in front of the S3 server that breaks some downloads.

It forwards every request unchanged, but the first ``cuts`` ranged GET responses are sent
with their full ``Content-Length`` and only half their body before the connection is
closed: what a flaky network does to a long download (botocore then raises
``IncompleteReadError`` or a protocol error while the body is read). The next ``corrupt``
GET responses with a body (set the attribute at any time) arrive whole, headers unchanged,
with one byte in the middle of the body inverted: a transfer that damaged the data.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class FlakyProxy:
    def __init__(self, upstream: str, cuts: int = 0, corrupt: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.cuts = cuts
        self.cut_ranges: list[str] = []
        self.corrupt = corrupt
        self.corrupted: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                cut = False
                if self.command == "GET" and self.headers.get("Range") and len(data) > 1:
                    with proxy._lock:
                        if proxy.cuts > 0:
                            proxy.cuts -= 1
                            proxy.cut_ranges.append(self.headers["Range"])
                            cut = True
                if self.command == "GET" and not cut and data:
                    with proxy._lock:
                        if proxy.corrupt > 0:
                            proxy.corrupt -= 1
                            proxy.corrupted.append(self.path)
                            middle = len(data) // 2
                            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.send_header("Connection", "close" if cut else "keep-alive")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
