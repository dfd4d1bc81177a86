"""The server's app under a real uvicorn on 127.0.0.1, in a thread of this process.

    with in_process_server(tmp_path) as server:        # or ServerConfig overrides: rate_burst=5
        server.publish(1); host = server.enroll("ws-1")
        server.client(host["node_key"]).get("/policy")
        server.app.state.ctx ...                        # the live objects, for what a test inspects

In this process, so a test can count the engine's statements or switch the app's first layer
(server_stub/frontdoor.py) off to compare its answers with the routes'.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from server_stub.store import Store
from tests.support.server import API, make_keys
from tests.support.server_policies import policy_yaml

STARTUP_DEADLINE = 20.0


class InProcessServer:
    def __init__(self, tmp_path: Path, *, listener: bool = False, **overrides: Any) -> None:
        """`listener`: with serve's protocol factory (server_stub/listener.py), as `serve` runs it."""
        import uvicorn

        from endpoint_contract.envelope import load_public_key
        from server_stub.app import create_app
        from server_stub.config import ServerConfig
        from server_stub.listener import protocol_factory
        from tests.support.ports import free_port

        self.tmp_path = tmp_path
        private, public = make_keys(tmp_path / "keys")
        self.private_key = private
        settings: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "public_keys": (load_public_key(public),),
            "admin_token": "adm-" + "a" * 24,
            "enroll_secret": "enr-" + "e" * 24,
            "reader_token": "rdr-" + "r" * 24,
            "write_behind": 60.0,  # flushed only when asked, or on the way out
            "rate_burst": 10_000,
        }
        self.config = ServerConfig(**{**settings, **overrides})
        self.app = create_app(self.config)
        self.store: Store = self.app.state.ctx.store
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="on",
                http=protocol_factory if listener else "auto",  # type: ignore[arg-type]
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.statements: list[tuple[str, str]] = []  # (thread name, SQL)
        sa.event.listen(self.store.engine, "before_cursor_execute", self._count)

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append((threading.current_thread().name, statement))

    def request_statements(self) -> list[str]:
        """Statements run on behalf of requests: in the event loop or a worker thread (not by the
        background threads: cache watcher, write-behind flush, rate-limit exchange)."""
        serving = {self.thread.name, "AnyIO worker thread"}
        return [sql for name, sql in self.statements if name in serving]

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url + API, headers=headers, timeout=30)

    def publish(self, version: int) -> None:
        from endpoint_agent.policy import parse_policy
        from endpoint_contract.envelope import load_private_key, sign_policy

        envelope = sign_policy(
            parse_policy(policy_yaml(version), "<test>"), [load_private_key(self.private_key)], "default"
        )
        with self.client(self.config.admin_token) as c:
            r = c.put("/policy", json={"envelope": envelope.decode(), "rollout_percent": 100})
            r.raise_for_status()

    def enroll(self, hostname: str) -> dict[str, str]:
        with self.client(self.config.enroll_secret) as c:
            r = c.post("/enroll", json={"hostname": hostname, "machine_id": "m-" + hostname})
            r.raise_for_status()
            body: dict[str, str] = r.json()
            return body


class _CountingDoor:
    """In place of the app's first layer: notes each request that reached ASGI, then hands it on."""

    def __init__(self, door: Any) -> None:
        self.door = door
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls.append(f"{scope['method']} {scope['path']}")
        await self.door(scope, receive, send)


@contextlib.contextmanager
def asgi_requests(server: InProcessServer) -> Iterator[list[str]]:
    """The requests ("METHOD /path") that reach the application in ASGI meanwhile (not those the
    HTTP protocol answers itself: server_stub/nodeprotocol.py)."""
    app: Any = server.app  # a ServerApp
    counting = _CountingDoor(app.front_door)
    app.front_door = counting
    try:
        yield counting.calls
    finally:
        app.front_door = counting.door


@contextlib.contextmanager
def in_process_server(
    tmp_path: Path, *, listener: bool = False, **overrides: Any
) -> Iterator[InProcessServer]:
    server = InProcessServer(tmp_path, listener=listener, **overrides)
    server.start()
    try:
        yield server
    finally:
        server.stop()
