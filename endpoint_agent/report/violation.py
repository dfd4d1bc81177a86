"""A finding after the agent acted, as the record it stores and uploads (endpoint_contract/events.py).

Built once per violation, with the forensic fields an analyst needs (hash, command line, parent,
the evidence the engine matched, the rule's severity) and the machine it happened on. Text is
bounded to the contract's limits here, so the server always accepts what the agent writes.
"""

from __future__ import annotations

import functools
import platform
import socket
from dataclasses import dataclass
from datetime import datetime

from endpoint_agent.types import Finding, Outcome
from endpoint_contract.events import (
    MAX_EVIDENCE,
    SHORT_MAX,
    TEXT_MAX,
    ConnectionRecord,
    EvidenceRecord,
    Violation,
)
from endpoint_contract.text import clip_text, escape_text

_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class HostFacts:
    hostname: str
    os: str


@functools.cache
def host_facts() -> HostFacts:
    """This machine's name and OS ("Debian GNU/Linux 13 (trixie)", else "Linux 6.1.0"), read once."""
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        os_name = ""
    os_name = os_name or f"{platform.system()} {platform.release()}".strip()
    hostname = socket.gethostname() or "unknown"
    return HostFacts(_short(escape_text(hostname)), _short(escape_text(os_name)))


def _short(text: str) -> str:
    # At most SHORT_MAX characters: UTF-8 bytes bound characters from above, so clipping bytes is enough.
    return clip_text(text, SHORT_MAX) if len(text) > SHORT_MAX // 4 else text


def _long(text: str) -> str:
    return clip_text(text, TEXT_MAX) if len(text) > TEXT_MAX // 4 else text


def _optional_long(text: str | None) -> str | None:
    return None if text is None else _long(text)


def build_violation(
    finding: Finding,
    outcome: Outcome,
    *,
    event_id: str,
    detected_at: datetime,
    policy_version: int,
    first_seen: datetime | None = None,
    detail: str | None = None,
    source: str | None = None,
    host: HostFacts | None = None,
) -> Violation:
    proc = finding.process
    host = host or host_facts()
    sha256 = proc.sha256.lower() if proc.sha256 else None
    # Bounded where it was collected (collect/cmdline.py); clipped again only if escaping grew it.
    cmdline = _long(proc.cmdline_str) if proc.cmdline else None
    return Violation(
        event_id=event_id,
        detected_at=detected_at,
        rule_id=finding.rule_id,
        category=finding.category,
        severity=finding.severity,
        action=outcome,
        pid=proc.pid,
        process_name=_long(proc.name),
        exe=_optional_long(proc.exe),
        sha256=sha256 if sha256 and len(sha256) == 64 and set(sha256) <= _SHA256_HEX else None,
        cmdline=cmdline,
        ppid=proc.ppid if proc.ppid >= 0 else None,
        parent_name=_optional_long(proc.parent_name),
        username=_short(proc.username) if proc.username is not None else None,
        evidence=[
            EvidenceRecord(
                attribute=_short(e.attribute),
                pattern=_long(escape_text(e.pattern)),
                value=_long(escape_text(e.value)),
            )
            for e in finding.evidence[:MAX_EVIDENCE]
        ],
        reason=_long(escape_text(finding.reason)),
        policy_version=policy_version,
        connection=ConnectionRecord.model_validate(finding.connection.to_json())
        if finding.connection
        else None,
        first_seen=first_seen,
        create_time=proc.create_time if proc.create_time >= 0 else None,
        detail=_long(detail) if detail else None,
        source=source,
        hostname=host.hostname,
        os=host.os,
    )


__all__ = ["HostFacts", "build_violation", "host_facts"]
