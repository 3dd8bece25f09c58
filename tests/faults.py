"""A fault-injecting HTTP proxy in front of the moto server, on 127.0.0.1.

It forwards S3 requests unchanged, and on demand answers some with ``503 SlowDown`` (throttling)
or goes away for a while, dropping open connections (an endpoint restart). Requests and faults
are counted so tests can show that the faults really happened.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.servers import free_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.requests = 0
        self.slowdowns = 0
        self.requests_at_stop = 0
        self._restart_at = 0
        self._down_for = 0.0
        self.slowdown_every = 0  # answer every Nth request with 503 SlowDown; 0 = never
        self.slowdown_budget = 0  # at most this many 503s in all
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.restarted = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._sockets.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._sockets.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _forward(self) -> None:
                body = self._read_body()
                if proxy._take_slowdown():
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOWDOWN_BODY)))
                    self.end_headers()
                    self.wfile.write(_SLOWDOWN_BODY)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _read_body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = self.headers.get("Content-Length")
                return self.rfile.read(int(length)) if length else None

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def _take_slowdown(self) -> bool:
        with self._lock:
            self.requests += 1
            if self._restart_at and self.requests == self._restart_at:
                threading.Thread(target=self._cycle, args=(0.0, self._down_for)).start()
            due = self.slowdown_every and self.requests % self.slowdown_every == 0
            if due and self.slowdowns < self.slowdown_budget:
                self.slowdowns += 1
                return True
        return False

    def stop(self) -> None:
        """Stop listening and drop every open connection, as a restarting endpoint would."""
        self.requests_at_stop = self.requests
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restart_at_request(self, number: int, down_for: float) -> None:
        """When request ``number`` arrives, go down for ``down_for`` s, then come back."""
        self._restart_at = number
        self._down_for = down_for

    def _cycle(self, delay: float, down_for: float) -> None:
        time.sleep(delay)
        self.stop()
        time.sleep(down_for)
        self.start()
        self.restarted.set()
