"""Violations as OCSF 1.3 Detection Findings (class 2004): one mapping for the agent's event log and
the server's file export.

OCSF (the Open Cybersecurity Schema Framework) is what Splunk, Elastic, Sentinel, Security Lake and
most SIEM pipelines ingest without a custom parser. Each violation becomes one finding:

    OCSF attribute                      from the violation
    class_uid 2004, category_uid 2      Detection Finding, in the Findings category
    activity_id 1 (Create), type_uid    200401: a new finding
    time                                detected_at, in milliseconds since the epoch
    severity_id, severity               severity: low 2, medium 3, high 4, critical 5
    status_id 1 (New)                   triage happens on the server afterwards
    action_id, disposition_id           action: see `_DISPOSITION` (what the agent did)
    finding_info.uid                    event_id (the dedup key downstream)
    finding_info.title / desc           rule_id / reason
    finding_info.types                  [category]
    finding_info.analytic               the rule: uid rule_id, type_id 1 (Rule)
    metadata.product / version          endpoint-agent and its version; OCSF 1.3.0
    metadata.original_time              detected_at as sent (ISO 8601)
    device                              hostname, host_id (uid), os (name, type_id)
    evidences[0].process                pid, name, cmd_line, user, file (path, name, SHA-256 hash),
                                        parent_process (pid, name)
    evidences[0].connection_info        protocol, direction; src/dst_endpoint from laddr/raddr
    evidences[0].dst_endpoint.domain    connection.domain, when known
    unmapped                            the contract keys OCSF has no place for: policy_version,
                                        evidence (attribute, pattern, value), action, category

Pure: a dict in, a dict out; nothing is lost that the violation carried.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

OCSF_VERSION = "1.3.0"
DETECTION_FINDING = 2004
FINDINGS_CATEGORY = 2
CREATE = 1

SEVERITY_ID = {"low": 2, "medium": 3, "high": 4, "critical": 5}
SEVERITY_NAME = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}

# action -> (action_id, disposition_id): 1 Allowed / 2 Denied; 1 Allowed, 2 Blocked, 15 Detected,
# 17 Logged, 19 Alert.
_DISPOSITION: dict[str, tuple[int, int]] = {
    "reported": (1, 17),
    "would_block": (1, 15),
    "killed": (2, 2),
    "suspended": (2, 2),
    "denied": (2, 2),
    "connection_blocked": (2, 2),
    "kill_failed": (1, 19),
    "protected": (1, 1),
}
_DISPOSITION_NAME = {1: "Allowed", 2: "Blocked", 15: "Detected", 17: "Logged", 19: "Alert"}
_OS_TYPE = (("windows", 100), ("linux", 200), ("darwin", 300), ("mac", 300))  # OCSF os.type_id, by name
SHA256_ALGORITHM = 3


def _millis(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _endpoint(text: str | None) -> dict[str, Any] | None:
    """'10.0.0.5:443' or '[::1]:53' -> {ip, port}."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    out: dict[str, Any] = {"ip": host.strip("[]")}
    if port.isdigit():
        out["port"] = int(port)
    return out


def _os(name: str | None) -> dict[str, Any] | None:
    if not name:
        return None
    lowered = name.lower()
    type_id = next((tid for word, tid in _OS_TYPE if word in lowered), 99)
    return {"name": name, "type_id": type_id}


def _process(v: dict[str, Any]) -> dict[str, Any]:
    proc: dict[str, Any] = {"pid": v.get("pid"), "name": v.get("process_name")}
    if v.get("cmdline"):
        proc["cmd_line"] = v["cmdline"]
    if v.get("username"):
        proc["user"] = {"name": v["username"]}
    if v.get("exe"):
        exe = str(v["exe"])
        file: dict[str, Any] = {"path": exe, "name": exe.rsplit("/", 1)[-1], "type_id": 1}
        if v.get("sha256"):
            file["hashes"] = [
                {"algorithm_id": SHA256_ALGORITHM, "algorithm": "SHA-256", "value": v["sha256"]}
            ]
        proc["file"] = file
    if v.get("ppid") is not None or v.get("parent_name"):
        parent: dict[str, Any] = {}
        if v.get("ppid") is not None:
            parent["pid"] = v["ppid"]
        if v.get("parent_name"):
            parent["name"] = v["parent_name"]
        proc["parent_process"] = parent
    return proc


def detection_finding(v: dict[str, Any], *, product_version: str) -> dict[str, Any]:
    """One violation (its contract JSON object) as an OCSF Detection Finding."""
    severity_id = SEVERITY_ID.get(str(v.get("severity", "medium")), 3)
    action_id, disposition_id = _DISPOSITION.get(str(v.get("action")), (1, 17))
    evidence: dict[str, Any] = {"process": _process(v)}
    conn = v.get("connection") or None
    if conn:
        evidence["connection_info"] = {"protocol_name": conn.get("proto"), "direction": conn.get("status")}
        src, dst = _endpoint(conn.get("laddr")), _endpoint(conn.get("raddr"))
        if src:
            evidence["src_endpoint"] = src
        if dst or conn.get("domain"):
            dst = dst or {}
            if conn.get("domain"):
                dst["domain"] = conn["domain"]
            evidence["dst_endpoint"] = dst
    device: dict[str, Any] = {"type_id": 0}
    if v.get("hostname"):
        device["hostname"] = v["hostname"]
    if v.get("host_id"):
        device["uid"] = v["host_id"]
    if os_ := _os(v.get("os")):
        device["os"] = os_
    finding = {
        "class_uid": DETECTION_FINDING,
        "class_name": "Detection Finding",
        "category_uid": FINDINGS_CATEGORY,
        "category_name": "Findings",
        "activity_id": CREATE,
        "activity_name": "Create",
        "type_uid": DETECTION_FINDING * 100 + CREATE,
        "type_name": "Detection Finding: Create",
        "time": _millis(v.get("detected_at")) or 0,
        "severity_id": severity_id,
        "severity": SEVERITY_NAME[severity_id],
        "status_id": 1,
        "status": "New",
        "action_id": action_id,
        "action": "Allowed" if action_id == 1 else "Denied",
        "disposition_id": disposition_id,
        "disposition": _DISPOSITION_NAME[disposition_id],
        "message": v.get("reason"),
        "finding_info": {
            "uid": v.get("event_id"),
            "title": v.get("rule_id"),
            "desc": v.get("reason"),
            "types": [v.get("category")] if v.get("category") else [],
            "analytic": {"uid": v.get("rule_id"), "name": v.get("rule_id"), "type_id": 1, "type": "Rule"},
        },
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": "endpoint-agent",
                "vendor_name": "endpoint-agent",
                "version": product_version,
            },
            "original_time": v.get("detected_at"),
            "uid": v.get("event_id"),
        },
        "device": device,
        "evidences": [evidence],
        "unmapped": {
            "policy_version": v.get("policy_version"),
            "action": v.get("action"),
            "category": v.get("category"),
            "evidence": v.get("evidence") or [],
        },
    }
    return finding


__all__ = ["OCSF_VERSION", "SEVERITY_ID", "detection_finding"]
