"""The agent's side of the server API (server_stub/API.md), over httpx.

    client = HttpServerClient(settings.server, enrollment=EnrollmentFile(state_dir),
                              enroll_secret=secret, machine_id=lambda: machine_id(state_dir))
    fetched = client.fetch_policy(etag)          # PolicyResponse: "ok" | "not_modified" | "none"
    acked = client.post_json("/events", {...})   # any node-authenticated JSON call

`ServerClient` is the one interface the rest of the agent sees; tests run `HttpServerClient`
on an `httpx.MockTransport` or against the real server. Every httpx failure is translated here:

- network error, timeout, 429, 5xx  -> ServerUnavailable (retry_after from `Retry-After`)
- 401 on a node call                -> enroll again once (a rotated or forgotten key), retry once
- any other 4xx, an unexpected 3xx  -> ServerRejected (do not retry unchanged)

Enrollment happens lazily, on the first call that needs a node key; the key is persisted
(mode 0600) so a restart does not enroll again.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from endpoint_agent import __version__
from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.errors import ServerRejected, ServerUnavailable, SettingsError
from endpoint_agent.logfmt import set_log_context
from endpoint_agent.sync.identity import Enrollment, EnrollmentFile
from endpoint_contract.envelope import MAX_ENVELOPE_BYTES
from endpoint_contract.events import add_keys, batch_body

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 15.0
# A server may ask for a pause; a longer one than this is more likely a bug than a plan.
MAX_RETRY_AFTER = 3600.0
# Bodies are read up to one byte past these limits: enough to tell (and report) that they are too large.
_MAX_POLICY_BODY = MAX_ENVELOPE_BYTES
_MAX_JSON_BODY = 1024 * 1024
_MAX_HOSTNAME = 256


@dataclass(frozen=True)
class PolicyResponse:
    """What GET /policy answered: a body ("ok"), 304 ("not_modified"), or 404 ("none" published)."""

    status: Literal["ok", "not_modified", "none"]
    body: bytes | None = None
    etag: str | None = None
    served_version: int | None = None  # the server's X-Policy-Version header; informative only


class ServerClient(Protocol):
    @property
    def host_id(self) -> str | None:
        """This host's id on the server, once enrolled."""
        ...

    def fetch_policy(self, etag: str | None) -> PolicyResponse:
        """GET /policy, conditional on `etag` (If-None-Match)."""
        ...

    def post_json(self, path: str, body: Mapping[str, object]) -> Any:
        """POST a JSON body to a node endpoint; the decoded JSON answer."""
        ...

    def post_events(self, events: Sequence[str]) -> list[str]: ...

    def post_heartbeat(self, heartbeat: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def parse_retry_after(value: str | None, clock: Clock) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    seconds = float(value) if value.isdigit() else None
    if seconds is None:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = (when - clock.now()).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_message(response: httpx.Response, body: bytes) -> str:
    """The server's one-line `{"error": ...}`, else the status line."""
    try:
        obj = json.loads(body)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return obj["error"].splitlines()[0][:300]
    except (ValueError, UnicodeDecodeError):
        pass
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Certificates checked against the system's CAs, or only against `ca_bundle` (an internal CA)."""
    try:
        return ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise SettingsError(
            f"invalid setting ca_bundle: {ca_bundle}: not a usable PEM bundle: {reason}"
        ) from exc


class HttpServerClient:
    def __init__(
        self,
        server: str,
        *,
        enrollment: EnrollmentFile,
        enroll_secret: str | None,
        machine_id: Callable[[], str],
        hostname: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        self._enrollment = enrollment
        self._enroll_secret = enroll_secret
        self._machine_id = machine_id
        self._hostname = (hostname or socket.gethostname() or "unknown")[:_MAX_HOSTNAME]
        self._clock = clock or SystemClock()
        self._enroll_lock = threading.Lock()
        self._http = httpx.Client(
            base_url=server.rstrip("/") + API_PREFIX,
            headers={"Accept": "application/json", "User-Agent": f"endpoint-agent/{__version__}"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,  # a redirect could carry the node key elsewhere
            verify=tls_context(ca_bundle),
        )

    def __enter__(self) -> HttpServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def host_id(self) -> str | None:
        current = self._enrollment.load()
        return current.host_id if current else None

    # -- the calls -----------------------------------------------------------------------------

    def fetch_policy(self, etag: str | None) -> PolicyResponse:
        headers = {"If-None-Match": etag} if etag else {}
        response, body = self._node_call("GET", "/policy", headers=headers, max_body=_MAX_POLICY_BODY)
        if response.status_code == 304:
            return PolicyResponse("not_modified", etag=response.headers.get("etag") or etag)
        if response.status_code == 404:
            return PolicyResponse("none")
        served = response.headers.get("x-policy-version", "")
        return PolicyResponse(
            "ok",
            body=body,
            etag=response.headers.get("etag"),
            served_version=int(served) if served.isdigit() else None,
        )

    def post_json(self, path: str, body: Mapping[str, object]) -> Any:
        try:
            content = json.dumps(body, allow_nan=False, default=str).encode("utf-8")
        except ValueError as exc:
            raise ServerRejected(f"POST {path}: body is not valid JSON: {exc}", 400) from exc
        headers = {"Content-Type": "application/json"}
        response, raw = self._node_call("POST", path, headers=headers, content=content)
        return self._json(response, raw, f"POST {path}")

    def post_events(self, events: Sequence[str]) -> list[str]:
        """POST /events (report.uploader's BatchSink): events already encoded, sent as they are
        (with this host's id, which the server checks against the node key); the acknowledged ids."""
        host_id = self.host_id
        texts = [add_keys(e, {"host_id": host_id}) for e in events] if host_id else list(events)
        response, raw = self._node_call(
            "POST", "/events", headers={"Content-Type": "application/json"}, content=batch_body(texts)
        )
        answer = self._json(response, raw, "POST /events")
        acked = answer.get("acked") if isinstance(answer, dict) else None
        if not isinstance(acked, list) or not all(isinstance(a, str) for a in acked):
            raise ServerUnavailable("POST /events: the answer has no list of acked event ids")
        return acked

    def post_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        """POST /heartbeat (report.heartbeat's HeartbeatSink)."""
        self.post_json("/heartbeat", heartbeat)

    def enroll(self) -> Enrollment:
        """POST /enroll with the enroll secret; persists and returns the new node key."""
        if not self._enroll_secret:
            raise ServerRejected("not enrolled and no enroll secret is configured (--enroll-secret)", 401)
        body = {"hostname": self._hostname, "machine_id": self._machine_id()}
        current = self._enrollment.load()
        if current is not None:
            # The server re-enrolls a known machine only with its current key (a rotation).
            body["node_key"] = current.node_key
        response, raw = self._send(
            "POST",
            "/enroll",
            headers={"Authorization": f"Bearer {self._enroll_secret}", "Content-Type": "application/json"},
            content=json.dumps(body).encode("utf-8"),
        )
        if response.status_code in (401, 403, 409):  # 409: known machine, no current key (admin reset)
            raise ServerRejected(f"enrollment refused: {_error_message(response, raw)}", response.status_code)
        self._raise_for_status(response, raw, "POST /enroll")
        obj = self._json(response, raw, "POST /enroll")
        host_id = obj.get("host_id") if isinstance(obj, dict) else None
        node_key = obj.get("node_key") if isinstance(obj, dict) else None
        if not (isinstance(host_id, str) and host_id and isinstance(node_key, str) and node_key):
            raise ServerUnavailable("POST /enroll: the answer has no host_id/node_key")
        enrollment = Enrollment(host_id, node_key)
        self._enrollment.save(enrollment)
        logger.info("enrolled with %s as host %s", self._http.base_url, host_id)
        return enrollment

    # -- plumbing ------------------------------------------------------------------------------

    def _current_key(self) -> Enrollment:
        with self._enroll_lock:
            current = self._enrollment.load()
            current = current if current is not None else self.enroll()
        set_log_context(host_id=current.host_id)  # every later log line names this host
        return current

    def _reenroll(self, rejected: Enrollment) -> Enrollment:
        with self._enroll_lock:
            current = self._enrollment.load()
            if current is not None and current.node_key != rejected.node_key:
                return current  # another job enrolled meanwhile; its key is the good one
            logger.warning("the server no longer accepts this host's node key; enrolling again")
            return self.enroll()

    def _node_call(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None = None,
        max_body: int = _MAX_JSON_BODY,
    ) -> tuple[httpx.Response, bytes]:
        what = f"{method} {path}"
        key = self._current_key()
        for attempt in (1, 2):
            auth = {**headers, "Authorization": f"Bearer {key.node_key}"}
            response, body = self._send(method, path, headers=auth, content=content, max_body=max_body)
            if response.status_code != 401:
                self._raise_for_status(response, body, what)
                return response, body
            if attempt == 1:
                key = self._reenroll(key)
        raise ServerRejected(
            f"{what}: node key refused right after enrolling: {_error_message(response, body)}", 401
        )

    def _send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None = None,
        max_body: int = _MAX_JSON_BODY,
    ) -> tuple[httpx.Response, bytes]:
        what = f"{method} {path}"
        try:
            request = self._http.build_request(method, path, headers=dict(headers), content=content)
            response = self._http.send(request, stream=True)
            try:
                body = self._read_capped(response, max_body)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(f"{what}: timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        except httpx.InvalidURL as exc:
            raise ServerRejected(f"{what}: invalid server URL: {exc}", 400) from exc
        return response, body

    @staticmethod
    def _read_capped(response: httpx.Response, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break  # enough to know it is too large; the rest is never read
        return b"".join(chunks)[: limit + 1]

    def _raise_for_status(self, response: httpx.Response, body: bytes, what: str) -> None:
        code = response.status_code
        if 200 <= code < 300 or code == 304:
            return
        message = f"{what}: {_error_message(response, body)}"
        if code == 429 or code >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock)
            raise ServerUnavailable(message, retry_after=retry_after)
        if code == 404 and what == "GET /policy":
            return  # "no policy is published for this host yet": an answer, not an error
        raise ServerRejected(message, code)

    @staticmethod
    def _json(response: httpx.Response, body: bytes, what: str) -> Any:
        if len(body) > _MAX_JSON_BODY:
            raise ServerUnavailable(f"{what}: the answer is larger than {_MAX_JSON_BODY} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ServerUnavailable(f"{what}: the answer (HTTP {response.status_code}) is not JSON") from exc


__all__ = [
    "API_PREFIX",
    "MAX_RETRY_AFTER",
    "HttpServerClient",
    "PolicyResponse",
    "ServerClient",
    "parse_retry_after",
]
