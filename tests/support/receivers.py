"""Real receivers for the export tests, on 127.0.0.1: a strict RFC 5424 syslog receiver (UDP, TCP,
TCP+TLS with octet counting) and a webhook receiver that verifies the HMAC signature and refuses
a replayed or stale timestamp. Each can be stopped and started again on the same port (an outage).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# RFC 5424: PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 "
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    r"(?P<sd>-|(?:\[[^\]]*\])+)(?: (?P<msg>.*))?$",
    re.DOTALL,
)


@dataclass(frozen=True)
class SyslogMessage:
    pri: int
    timestamp: str
    hostname: str
    app: str
    msgid: str
    msg: str

    def cef_extension(self) -> dict[str, str]:
        """The CEF extension as a dict, unescaping `\\=`, `\\\\` and `\\n` as the spec says."""
        header_and_ext = _split_cef(self.msg)
        return _parse_extension(header_and_ext[7])

    def cef_header(self) -> list[str]:
        return _split_cef(self.msg)[:7]


def _split_cef(msg: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(msg) and len(parts) < 7:
        ch = msg[i]
        if ch == "\\" and i + 1 < len(msg):
            cur += msg[i + 1]
            i += 2
            continue
        if ch == "|":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(msg[i:])
    if len(parts) != 8 or not parts[0].startswith("CEF:"):
        raise ValueError(f"not CEF: {msg[:80]!r}")
    return parts


def _parse_extension(ext: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for match in re.finditer(r"(\w+)=((?:\\.|[^\\])*?)(?= \w+=|$)", ext):
        value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), match.group(2))
        out[match.group(1)] = value
    return out


def parse_rfc5424(data: bytes) -> SyslogMessage:
    text = data.decode("utf-8")
    m = RFC5424.match(text)
    if m is None:
        raise ValueError(f"not RFC 5424: {text[:120]!r}")
    return SyslogMessage(int(m["pri"]), m["ts"], m["host"], m["app"], m["msgid"], m["msg"] or "")


@dataclass
class SyslogReceiver:
    """Binds 127.0.0.1:`port` (0: any); `transport` udp, tcp or tls (then `cert`/`key`)."""

    transport: str
    port: int = 0
    cert: Path | None = None
    key: Path | None = None
    messages: list[SyslogMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _running: bool = False

    def start(self) -> SyslogReceiver:
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        sock.settimeout(0.2)
        self._sock, self._running = sock, True
        target = self._udp if self.transport == "udp" else self._accept
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._running = False
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _add(self, data: bytes) -> None:
        try:
            msg = parse_rfc5424(data)
        except (ValueError, UnicodeDecodeError) as exc:
            with self._lock:
                self.errors.append(str(exc))
            return
        with self._lock:
            self.messages.append(msg)

    def _udp(self) -> None:
        assert self._sock is not None
        while self._running:
            with contextlib.suppress(TimeoutError, OSError):
                data, _ = self._sock.recvfrom(65536)
                self._add(data)

    def _accept(self) -> None:
        assert self._sock is not None
        context = None
        if self.transport == "tls":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.cert), str(self.key))
        conns: list[socket.socket] = []
        while self._running:
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            if context is not None:
                try:
                    conn.settimeout(5)
                    conn = context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.errors.append(f"tls: {exc}")
                    conn.close()
                    continue
            conns.append(conn)
            thread = threading.Thread(target=self._read_frames, args=(conn,), daemon=True)
            thread.start()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()

    def _read_frames(self, conn: socket.socket) -> None:
        """Octet counting (RFC 6587 3.4.1): 'LEN SP MSG', strictly."""
        buf = b""
        conn.settimeout(0.2)
        while self._running:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while True:
                head, sep, rest = buf.partition(b" ")
                if not sep:
                    break
                if not head.isdigit():
                    self.errors.append(f"bad frame header {head[:20]!r}")
                    return
                size = int(head)
                if len(rest) < size:
                    break
                self._add(rest[:size])
                buf = rest[size:]

    def received(self) -> list[SyslogMessage]:
        with self._lock:
            return list(self.messages)


class WebhookReceiver:
    """POST receiver: checks X-Endpoint-Signature (v1=HMAC-SHA256 of "<timestamp>." + body) and the
    timestamp (within `tolerance` seconds, never seen before), answers 401 otherwise."""

    def __init__(self, secret: str, *, tolerance: float = 300.0, port: int = 0) -> None:
        self.secret, self.tolerance, self.port = secret, tolerance, port
        self.accepted: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.fail_with: int | None = None  # answer every POST with this status (an unhealthy receiver)

    def verify(self, headers: Any, body: bytes) -> str | None:
        stamp = headers.get("X-Endpoint-Timestamp", "")
        signature = headers.get("X-Endpoint-Signature", "")
        if not stamp.isdigit():
            return "no timestamp"
        if abs(time.time() - int(stamp)) > self.tolerance:
            return "stale timestamp"
        mac = hmac.new(self.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, "v1=" + mac):
            return "bad signature"
        with self._lock:
            if (stamp, signature) in self._seen:
                return "replayed"
            self._seen.add((stamp, signature))
        return None

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.fail_with is not None:
                    self.send_response(receiver.fail_with)
                    self.end_headers()
                    return
                problem = receiver.verify(self.headers, body)
                if problem is not None:
                    with receiver._lock:
                        receiver.rejected.append(problem)
                    self.send_response(401)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.accepted.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
