"""The admin side of the server API (httpx), with every failure turned into an AdminError."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from endpoint_admin.errors import AdminInputError, AdminServerError
from endpoint_agent.errors import SettingsError
from endpoint_agent.sync.client import tls_context

API_PREFIX = "/api/v1"
PAGE_LIMIT = 500
RATE_LIMIT_RETRIES = 5
MAX_RETRY_AFTER = 30.0


class AdminClient:
    def __init__(
        self,
        server: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        self._sleep = sleep
        # The server's base URL, or its API URL: both work (the prefix is added here once).
        base = server.rstrip("/").removesuffix(API_PREFIX)
        if not base.startswith(("http://", "https://")):
            raise AdminInputError(f"--server: expected an http:// or https:// URL, got {server!r}")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base + API_PREFIX,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=_verify(ca_bundle),
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    # --- policy -----------------------------------------------------------------------------

    def publish(self, envelope: dict[str, Any], rollout_percent: int) -> dict[str, Any]:
        return self._json("PUT", "/policy", json={"envelope": envelope, "rollout_percent": rollout_percent})

    def rollout(self, percent: int) -> dict[str, Any]:
        return self._json("POST", "/policy/rollout", json={"percent": percent})

    def rollback(self) -> dict[str, Any]:
        return self._json("POST", "/policy/rollback", json={})

    # --- reports ----------------------------------------------------------------------------

    def iter_pages(self, path: str, params: dict[str, str | None]) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated listing, page by page as the server sends them."""
        query: dict[str, str] = {k: v for k, v in params.items() if v is not None}
        query.setdefault("limit", str(PAGE_LIMIT))
        while True:
            page = self._json("GET", path, params=query)
            items = page.get("items")
            if not isinstance(items, list):
                raise AdminServerError(f"server answered {path} without an item list")
            yield from items
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = str(cursor)

    def hosts(self, params: dict[str, str | None] | None = None) -> list[dict[str, Any]]:
        """Every host matching `params` (stale, mode, policy_version, hostname_prefix), all pages
        (a server that does not page answers everything on the first)."""
        return list(self.iter_pages("/hosts", params or {}))

    def reset_host(self, host: str) -> dict[str, Any]:
        return self._json("POST", f"/hosts/{quote(host, safe='')}/reset", json={})

    def create_enroll_token(self, expires_in: int, uses: int) -> dict[str, Any]:
        return self._json("POST", "/enroll-tokens", json={"expires_in": expires_in, "uses": uses})

    def policy_versions(self) -> list[dict[str, Any]]:
        items = self._json("GET", "/policy/versions").get("items")
        if not isinstance(items, list):
            raise AdminServerError("server answered /policy/versions without an item list")
        return items

    def summary(self, since: str | None) -> dict[str, Any]:
        return self._json("GET", "/summary", params={"since": since} if since else None)

    def report(self, since: str | None, until: str | None, fmt: str) -> str:
        """The compliance report as the server renders it (html or csv)."""
        params = {k: v for k, v in {"since": since, "until": until, "format": fmt}.items() if v}
        response = self._request("GET", "/report", params=params)
        if response.is_error:
            self._json_error("GET", "/report", response)
        return response.text

    # --- plumbing ---------------------------------------------------------------------------

    def _json_error(self, method: str, path: str, response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = None
        message = body.get("error") if isinstance(body, dict) else None
        detail = message or response.reason_phrase or "error"
        raise AdminServerError(
            f"server refused {method} {path}: {response.status_code} {detail}",
            status_code=response.status_code,
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error:
            self._json_error(method, path, response)
        if not isinstance(body, dict):
            raise AdminServerError(f"server answered {method} {path} with something other than a JSON object")
        return body

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a rate-limited one (429) is retried after the delay the server asks for."""
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise AdminServerError(f"cannot reach server {self._http.base_url}: {exc}") from exc
            if response.status_code != 429 or attempt == RATE_LIMIT_RETRIES:
                return response
            self._sleep(_retry_after(response))
        raise AssertionError("unreachable")


def _verify(ca_bundle: Path | None) -> ssl.SSLContext:
    try:
        return tls_context(ca_bundle)
    except SettingsError as exc:
        raise AdminInputError(f"--ca-bundle: {exc}") from exc


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.1), MAX_RETRY_AFTER)
    except ValueError:
        return 1.0
