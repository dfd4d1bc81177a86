"""A loopback HTTP proxy between an agent and the server that can withhold the answer to an upload.

    with HoldingProxy(server.base_url) as proxy:        # agent: --server proxy.url
        proxy.hold_events.set()
        proxy.held.wait(30)     # a POST /events reached the server, which stored it; no answer yet
        ... kill -9 the agent ...

With `hold_events` set, a `POST /api/v1/events` is forwarded, the server's answer read and then
dropped: the connection closes without a response once `release` is set (or the proxy closes).
That is the worst moment for an agent to die: the server committed, the agent never heard.
Loopback only; every thread it starts ends when it is closed.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "content-encoding"}


class HoldingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold_events = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self.held_batches: list[bytes] = []
        self._http = httpx.Client(base_url=self.upstream, timeout=30.0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="holding-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> HoldingProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        self._http.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                try:
                    answer = proxy._http.request(self.command, self.path, headers=headers, content=body)
                except httpx.HTTPError:
                    self.send_error(502)
                    return
                if self.command == "POST" and self.path.endswith("/events") and proxy.hold_events.is_set():
                    proxy.held_batches.append(body)
                    proxy.held.set()
                    proxy.release.wait(120)
                    self.close_connection = True  # no answer: the agent never learns what was stored
                    return
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = _forward
            do_POST = _forward
            do_PUT = _forward

        return Handler


__all__ = ["HoldingProxy"]
