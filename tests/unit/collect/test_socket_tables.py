"""SocketTables: the same Connections as parse_table + classify, parsing only what changed."""

from __future__ import annotations

from endpoint_agent.collect.connections import RawSocket, classify
from endpoint_agent.collect.proc_net import parse_table
from endpoint_agent.collect.socket_tables import SocketTables
from endpoint_agent.types import Direction

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TAIL = " 1 0000000000000000 20 4 30 10 -1"
LISTENER = (
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001" + TAIL
)
ACCEPTED = (
    "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 1002" + TAIL
)
CLIENT = (
    "   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1003" + TAIL
)
WAITING = (
    "   3: 0100007F:C351 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0" + TAIL
)
# The same socket as ACCEPTED a moment later: queue and timer columns moved, nothing that identifies it.
ACCEPTED_LATER = (
    "   1: 0100007F:1F90 0100007F:C350 01 00000010:00000000 01:00000020 00000000  1000        0 1002" + TAIL
)
OWNERS = {1001: [50], 1002: [50], 1003: [60]}


def table(*lines: str) -> str:
    return HEADER + "".join(line + "\n" for line in lines)


def reference(text: str) -> list[object]:
    raws = []
    for rec in parse_table(text, "tcp"):
        holders: list[int | None] = [*OWNERS.get(rec.inode, [])] or [None]
        for pid in holders:
            raws.append(RawSocket(pid, rec.family, rec.proto, rec.laddr, rec.raddr, rec.status, None))
    return list(classify(raws))


def test_connections_are_those_of_parse_table_and_classify() -> None:
    text = table(LISTENER, ACCEPTED, CLIENT, WAITING)
    tables = SocketTables()
    parsed = tables.parse("net:[1]", None, {"tcp": text})
    assert tables.connections(parsed, OWNERS) == reference(text)
    directions = [c.direction for c in tables.connections(parsed, OWNERS)]
    assert directions == [Direction.LISTEN, Direction.INBOUND, Direction.OUTBOUND, Direction.OUTBOUND]


def test_an_unchanged_socket_is_not_parsed_again_even_if_its_counters_moved() -> None:
    tables = SocketTables()
    first = tables.connections(tables.parse("net:[1]", None, {"tcp": table(LISTENER, ACCEPTED)}), OWNERS)
    parsed = tables.lines_parsed
    second = tables.connections(
        tables.parse("net:[1]", None, {"tcp": table(LISTENER, ACCEPTED_LATER)}), OWNERS
    )
    assert tables.lines_parsed == parsed
    assert second == first and all(a is b for a, b in zip(first, second, strict=True))  # reused objects


def test_when_the_listener_goes_directions_are_worked_out_again() -> None:
    tables = SocketTables()
    tables.connections(tables.parse("net:[1]", None, {"tcp": table(LISTENER, ACCEPTED)}), OWNERS)
    [accepted] = tables.connections(tables.parse("net:[1]", None, {"tcp": table(ACCEPTED)}), OWNERS)
    assert accepted.direction is Direction.OUTBOUND  # classify's documented limit, kept exactly
    assert [accepted] == reference(table(ACCEPTED))


def test_a_socket_shared_by_two_processes_is_listed_for_each() -> None:
    tables = SocketTables()
    parsed = tables.parse("net:[1]", None, {"tcp": table(LISTENER)})
    conns = tables.connections(parsed, {1001: [50, 51]})
    assert [c.pid for c in conns] == [50, 51]
    assert tables.connections(parsed, {1001: [50, 51]}) == conns
    assert [c.pid for c in tables.connections(parsed, {1001: [50, 51]}, only={51})] == [51]


def test_only_present_lines_are_kept() -> None:
    tables = SocketTables()
    tables.parse("net:[1]", None, {"tcp": table(LISTENER, CLIENT)})
    tables.parse("net:[1]", None, {"tcp": table(LISTENER)})
    parsed = tables.lines_parsed
    tables.parse("net:[1]", None, {"tcp": table(LISTENER, CLIENT)})  # CLIENT was forgotten meanwhile
    assert tables.lines_parsed == parsed + 1
    tables.retain([])
    tables.parse("net:[1]", None, {"tcp": table(LISTENER)})
    assert tables.lines_parsed == parsed + 2


def test_namespace_label_reaches_the_connection() -> None:
    tables = SocketTables()
    parsed = tables.parse("net:[2]", "net:[2]", {"tcp": table(CLIENT)})
    [conn] = tables.connections(parsed, OWNERS)
    assert conn.netns == "net:[2]" and conn.pid == 60
