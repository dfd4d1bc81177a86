"""The API reference at /docs, rendered on the server from the OpenAPI document.

FastAPI's stock pages load their scripts from a CDN; this page is plain HTML with no script, so it
works on a server without Internet access and under a strict Content-Security-Policy.
Every documented status code of every operation is listed (see `document_errors`).
"""

from __future__ import annotations

from html import escape
from typing import Any

from endpoint_agent import __version__

# Answers every operation may give, and why; added to the OpenAPI document by `document_errors`.
_WHY = {
    400: "malformed request (Content-Length, cursor, time filter)",
    401: "missing or invalid credentials",
    403: "these credentials may not use this endpoint",
    404: "nothing published yet",
    408: "request body not received within --body-timeout seconds",
    409: "conflicts with the current state (version not newer, nothing to roll back to)",
    413: "request body or batch too large",
    422: "invalid request: the field is named",
    429: "rate limited; retry after Retry-After seconds",
    503: "database unavailable; retry after Retry-After seconds",
}
# Operation-specific answers raised by the store (method, path) -> codes.
_SPECIFIC = {
    ("put", "/api/v1/policy"): (409,),
    ("post", "/api/v1/policy/rollout"): (404,),
    ("post", "/api/v1/policy/rollback"): (404, 409),
    ("post", "/api/v1/enroll"): (409,),
    ("post", "/api/v1/hosts/{host}/reset"): (404,),
}


def document_errors(schema: dict[str, Any], unlimited_paths: frozenset[str]) -> dict[str, Any]:
    """Add the error answers each operation can give (auth, body limits, rate limit, store) in place."""
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["error"],
        "title": "ErrorBody",
    }
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            codes = {400}
            if path not in unlimited_paths:
                codes.add(429)
            if op.get("security"):
                codes |= {401, 403, 503}
            if op.get("requestBody") or op.get("parameters"):
                codes.add(422)
            if op.get("requestBody"):
                codes |= {408, 413}
            codes.update(_SPECIFIC.get((method, path), ()))
            responses = op.setdefault("responses", {})
            for code in sorted(codes):
                entry = responses.setdefault(str(code), {"description": _WHY[code]})
                entry["content"] = error_ref
    return schema


def render_docs(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(str(info.get('title', 'API')))} API</title>",
        "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "code,td{font-family:ui-monospace,monospace;font-size:14px}"
        "h2{margin-top:2em;border-top:1px solid #ccc;padding-top:1em}table{border-collapse:collapse}"
        "td{padding:2px 1em 2px 0;vertical-align:top}</style>",
        "</head><body>",
        f"<h1>{escape(str(info.get('title', '')))} {escape(str(info.get('version', __version__)))}</h1>",
        f"<p>{escape(str(info.get('description', '')))}</p>",
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>. Errors are '
        '<code>{"error": "one line"}</code>.</p>',
    ]
    for path, operations in sorted(schema.get("paths", {}).items()):
        for method, op in operations.items():
            parts.append(f"<h2><code>{escape(method.upper())} {escape(path)}</code></h2>")
            if op.get("summary") or op.get("description"):
                parts.append(f"<p>{escape(str(op.get('description') or op.get('summary')))}</p>")
            who = "credentials: Bearer token" if op.get("security") else "no credentials"
            parts.append(f"<p><em>{who}</em></p>")
            params = op.get("parameters") or []
            if params:
                parts.append("<p>Parameters:</p><table>")
                for p in params:
                    desc = p.get("description") or p.get("schema", {}).get("description") or ""
                    parts.append(
                        f"<tr><td>{escape(str(p.get('name')))}</td><td>{escape(str(p.get('in')))}</td>"
                        f"<td>{escape(str(desc))}</td></tr>"
                    )
                parts.append("</table>")
            parts.append("<p>Answers:</p><table>")
            for code, answer in sorted(op.get("responses", {}).items()):
                parts.append(
                    f"<tr><td>{escape(code)}</td><td>{escape(str(answer.get('description', '')))}</td></tr>"
                )
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
