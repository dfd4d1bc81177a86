"""`host[:port]` text of DNS servers (settings) as Endpoints: `127.0.0.153:53`, `[::1]:5353`, `9.9.9.9`."""

from __future__ import annotations

import ipaddress

from endpoint_agent.types import Endpoint


def parse_server(text: str, default_port: int = 53) -> Endpoint:
    """ValueError with a short sentence when `text` is not an IP address with an optional port."""
    value = text.strip()
    host, port = value, default_port
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IPv6]:port")
        if rest:
            port = _port(rest[1:], text)
    elif value.count(":") == 1:
        host, _, raw = value.partition(":")
        port = _port(raw, text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (a DNS server is named by address)") from None
    return Endpoint(str(ip), port)


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return int(raw)


__all__ = ["parse_server"]
