"""Violations as CEF (ArcSight Common Event Format) inside RFC 5424 syslog messages.

    <PRI>1 TIMESTAMP HOSTNAME endpoint-agent - violation - CEF:0|VENDOR|PRODUCT|VER|RULE|NAME|SEV|EXT

PRI is facility * 8 + the syslog severity of the rule's severity (critical 2, high 3, medium 4,
low 5); HOSTNAME is the workstation's, so a SIEM files the event under the machine it happened on.
CEF severity: low 3, medium 5, high 8, critical 10. The extension maps the contract keys:

    CEF key                 from                        CEF key                 from
    rt                      detected_at (ms)            externalId              event_id
    shost, dvchost          hostname                    deviceExternalId        host_id
    suser                   username                    act                     action
    sproc, spid             process_name, pid           cat                     category
    filePath, fileHash      exe, sha256                 msg                     reason
    src, spt                connection laddr            dst, dpt, proto         connection raddr, proto
    cs1 (cs1Label=rule_id)  rule_id                     cs2 (cs2Label=cmdline)  cmdline
    cs3 (parent_name)       parent_name                 cn1 (cn1Label=ppid)     ppid
    cs4 (policy_version)    policy_version              cs5 (domain)            connection.domain
    cs6 (evidence)          evidence, as attribute=pattern~value; ...
    deviceSeverity          severity (its name)         dvc...                  (not set: not known)

Escaping follows the CEF specification: `\\` and `|` in the header, `\\`, `=` and line breaks in
extension values. Nothing a process name holds can end a field or start a new one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

CEF_SEVERITY = {"low": 3, "medium": 5, "high": 8, "critical": 10}
SYSLOG_SEVERITY = {"low": 5, "medium": 4, "high": 3, "critical": 2}
APP_NAME = "endpoint-agent"
MAX_DATAGRAM = 8192  # a syslog-over-UDP message stays well inside one datagram


_HEADER_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "\r": " ", "\n": " "})
_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", "=": "\\=", "\n": "\\n", "\r": "\\r"})


def _header(text: object) -> str:
    return str(text).translate(_HEADER_ESCAPES)


def _value(text: object) -> str:
    return str(text).translate(_VALUE_ESCAPES)


def _millis(text: object) -> int | None:
    try:
        return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _split(endpoint: object) -> tuple[str | None, str | None]:
    if not endpoint:
        return None, None
    host, _, port = str(endpoint).rpartition(":")
    return host.strip("[]") or None, port if port.isdigit() else None


def cef(v: dict[str, Any], *, product_version: str) -> str:
    severity = str(v.get("severity") or "medium")
    ext: list[tuple[str, object]] = [
        ("rt", _millis(v.get("detected_at"))),
        ("externalId", v.get("event_id")),
        ("shost", v.get("hostname")),
        ("dvchost", v.get("hostname")),
        ("deviceExternalId", v.get("host_id")),
        ("suser", v.get("username")),
        ("sproc", v.get("process_name")),
        ("spid", v.get("pid")),
        ("filePath", v.get("exe")),
        ("fileHash", v.get("sha256")),
        ("act", v.get("action")),
        ("cat", v.get("category")),
        ("deviceSeverity", severity),
        ("msg", v.get("reason")),
        ("cs1Label", "rule_id"),
        ("cs1", v.get("rule_id")),
        ("cs2Label", "cmdline"),
        ("cs2", v.get("cmdline")),
        ("cs3Label", "parent_name"),
        ("cs3", v.get("parent_name")),
        ("cn1Label", "ppid"),
        ("cn1", v.get("ppid")),
        ("cs4Label", "policy_version"),
        ("cs4", v.get("policy_version")),
    ]
    conn = v.get("connection") or {}
    if conn:
        src, spt = _split(conn.get("laddr"))
        dst, dpt = _split(conn.get("raddr"))
        ext += [("src", src), ("spt", spt), ("dst", dst), ("dpt", dpt), ("proto", conn.get("proto"))]
        if conn.get("domain"):
            ext += [("cs5Label", "domain"), ("cs5", conn["domain"])]
    evidence = v.get("evidence") or []
    if evidence:
        text = "; ".join(f"{e.get('attribute')}={e.get('pattern')}~{e.get('value')}" for e in evidence)
        ext += [("cs6Label", "evidence"), ("cs6", text)]
    extension = " ".join(f"{key}={_value(val)}" for key, val in ext if val is not None and val != "")
    header = "|".join(
        _header(part)
        for part in (
            "CEF:0",
            "endpoint-agent",
            "endpoint-agent",
            product_version,
            v.get("rule_id", "-"),
            v.get("rule_id", "-"),
            CEF_SEVERITY.get(severity, 5),
        )
    )
    return f"{header}|{extension}"


def _header_field(text: object, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or '-'."""
    cleaned = "".join(ch for ch in str(text or "") if 33 <= ord(ch) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(v: dict[str, Any], *, facility: int, product_version: str) -> str:
    """One RFC 5424 message (without transport framing) carrying the violation as CEF.

    Its TIMESTAMP is when the violation was detected, so one delivered late (the SIEM was down)
    is still filed at the time it happened.
    """
    severity = str(v.get("severity") or "medium")
    pri = facility * 8 + SYSLOG_SEVERITY.get(severity, 4)
    millis = _millis(v.get("detected_at"))
    when = datetime.fromtimestamp(millis / 1000, UTC) if millis is not None else datetime.now(UTC)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = _header_field(v.get("hostname"), 255)
    return f"<{pri}>1 {stamp} {host} {APP_NAME} - violation - {cef(v, product_version=product_version)}"


__all__ = ["CEF_SEVERITY", "MAX_DATAGRAM", "SYSLOG_SEVERITY", "cef", "syslog_message"]
