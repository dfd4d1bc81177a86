"""Where violations go: one small class per kind of sink, each with `deliver(events)`.

`deliver` sends the events in order and returns when all of them were handed over; when the
destination fails part way it raises `DeliveryFailed` saying how many went through first, so the
runner moves the cursor exactly that far and retries the rest (at-least-once, in order).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx

from endpoint_agent.report.jsonlines import RotatingJsonLines
from endpoint_contract.ocsf import detection_finding
from server_stub.export.cef import MAX_DATAGRAM, syslog_message
from server_stub.export.config import FileSink, Sink, SyslogSink, WebhookSink

SIGNATURE_HEADER = "X-Endpoint-Signature"
TIMESTAMP_HEADER = "X-Endpoint-Timestamp"
EVENT_HEADER = "X-Endpoint-Event-Id"


class DeliveryFailed(Exception):
    def __init__(self, message: str, delivered: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.delivered = delivered
        self.retry_after = retry_after


class Destination(Protocol):
    def deliver(self, events: Sequence[dict[str, Any]]) -> int:
        """Send `events`; the number skipped on purpose (filtered or refused as malformed)."""
        ...

    def close(self) -> None: ...


# -- syslog -----------------------------------------------------------------------------------


class SyslogDestination:
    """RFC 5424 + CEF over UDP (a datagram each), TCP or TLS (octet counting: 'LEN SP MSG')."""

    def __init__(self, sink: SyslogSink, product_version: str) -> None:
        self.sink = sink
        self.version = product_version
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        s = self.sink
        if s.transport == "udp":
            sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(s.timeout)
            sock.connect((s.host, s.port))  # connected: a refused port shows as an error on send
            return sock
        sock = socket.create_connection((s.host, s.port), timeout=s.timeout)
        if s.transport == "tls":
            context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
            sock = context.wrap_socket(sock, server_hostname=s.host)
        return sock

    def deliver(self, events: Sequence[dict[str, Any]]) -> int:
        done = 0
        try:
            if self._sock is None:
                self._sock = self._connect()
            for event in events:
                message = syslog_message(event, facility=self.sink.facility, product_version=self.version)
                data = message.encode("utf-8", "backslashreplace")
                if self.sink.transport == "udp":
                    self._sock.send(data[:MAX_DATAGRAM])
                else:
                    self._sock.sendall(b"%d " % len(data) + data)
                done += 1
        except OSError as exc:
            self.close()
            raise DeliveryFailed(f"syslog {self.sink.host}:{self.sink.port}: {exc}", done) from exc
        return 0

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


# -- file -------------------------------------------------------------------------------------


def ocsf_line(event: dict[str, Any], product_version: str) -> str:
    return json.dumps(
        detection_finding(event, product_version=product_version), ensure_ascii=False, separators=(",", ":")
    )


class FileDestination:
    """OCSF Detection Findings as JSON lines, for a file shipper (Splunk UF, Filebeat, the AMA)."""

    def __init__(self, sink: FileSink, product_version: str) -> None:
        self.sink = sink
        self.version = product_version
        self._file = RotatingJsonLines(sink.path, sink.max_bytes, sink.backups)

    def deliver(self, events: Sequence[dict[str, Any]]) -> int:
        try:
            self._file.write([ocsf_line(e, self.version) for e in events])
        except OSError as exc:
            self._file.close()
            raise DeliveryFailed(f"file {self.sink.path}: {exc.strerror or exc}", 0) from exc
        return 0

    def close(self) -> None:
        self._file.close()


# -- webhook ----------------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: v1=HMAC-SHA256(secret, "<timestamp>." + body), hex."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def slack_text(event: dict[str, Any]) -> str:
    conn = event.get("connection") or {}
    where = f" to {conn.get('domain') or conn.get('raddr')}" if conn else ""
    return (
        f"[{str(event.get('severity') or 'medium').upper()}] {event.get('rule_id')} on "
        f"{event.get('hostname') or event.get('host_id')}: {event.get('process_name')} "
        f"(pid {event.get('pid')}, user {event.get('username') or '?'}){where}, {event.get('action')}. "
        f"{event.get('reason')}"
    )


class WebhookDestination:
    """One POST per violation; 2xx delivers it, 4xx (but 408/429) refuses it for good, the rest retries."""

    def __init__(
        self, sink: WebhookSink, product_version: str, *, clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:  # fmt: skip
        self.sink = sink
        self.clock = clock
        self._client = httpx.Client(
            timeout=sink.timeout,
            transport=transport,
            headers={"User-Agent": f"endpoint-server/{product_version}"},
        )

    def body(self, event: dict[str, Any]) -> bytes:
        doc: dict[str, Any] = {"text": slack_text(event)} if self.sink.format == "slack" else event
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def deliver(self, events: Sequence[dict[str, Any]]) -> int:
        skipped = 0
        for done, event in enumerate(events):
            if not self.sink.filter.accepts(event):
                skipped += 1
                continue
            body = self.body(event)
            stamp = str(int(self.clock()))
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp}
            headers[EVENT_HEADER] = str(event.get("event_id", ""))
            if self.sink.secret:
                headers[SIGNATURE_HEADER] = sign(self.sink.secret, stamp, body)
            try:
                answer = self._client.post(self.sink.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise DeliveryFailed(f"webhook {self.sink.name}: {exc}", done) from exc
            if answer.is_success:
                continue
            if answer.status_code in (408, 429) or answer.status_code >= 500:
                retry_after = _retry_after(answer.headers.get("Retry-After"))
                raise DeliveryFailed(
                    f"webhook {self.sink.name}: HTTP {answer.status_code}", done, retry_after=retry_after
                )
            skipped += 1  # the receiver refuses this one for good: retrying would block the rest
        return skipped

    def close(self) -> None:
        self._client.close()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def open_destination(sink: Sink, product_version: str) -> Destination:
    if isinstance(sink, SyslogSink):
        return SyslogDestination(sink, product_version)
    if isinstance(sink, FileSink):
        return FileDestination(sink, product_version)
    return WebhookDestination(sink, product_version)


__all__ = [
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryFailed",
    "Destination",
    "FileDestination",
    "SyslogDestination",
    "WebhookDestination",
    "ocsf_line",
    "open_destination",
    "sign",
    "slack_text",
]
