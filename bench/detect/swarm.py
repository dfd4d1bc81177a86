"""Minimal BitTorrent swarm members on loopback: enough peers to make a test swarm look like one.

Each member listens on its own 127.x address and port, answers the BitTorrent handshake (BEP 3)
for one info_hash, and, given `--dial` targets, connects to them from its own address the way a
peer that learnt them from the tracker would. Members own no pieces and ask for none: the real
data is exchanged between the real clients of the case; these make the swarm the size of a
small real one (a client meets tens of peers), which is what behavioural detection has to see.

    python -m bench.detect.swarm --info-hash HEX --member 127.0.1.1:41001 ... --dial 127.0.0.2:40002
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import sys

PROTOCOL = b"\x13BitTorrent protocol"
HANDSHAKE_LEN = len(PROTOCOL) + 8 + 20 + 20
KEEPALIVE_SECONDS = 30
DIAL_RETRY_SECONDS = 0.3


def handshake(info_hash: bytes, peer_id: bytes) -> bytes:
    return PROTOCOL + bytes(8) + info_hash + peer_id


def _peer_id(index: int) -> bytes:
    return b"-EA0001-" + f"{index:04d}".encode() + os.urandom(8)


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep the connection like an idle peer: keepalives out, everything in is read and dropped."""

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            writer.write(bytes(4))
            await writer.drain()

    task = asyncio.create_task(keepalive())
    try:
        while await reader.read(65536):
            pass
    except OSError:
        pass
    finally:
        task.cancel()
        writer.close()


class Member:
    def __init__(self, index: int, host: str, port: int, info_hash: bytes) -> None:
        self.host, self.port, self.info_hash = host, port, info_hash
        self.peer_id = _peer_id(index)

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._accepted, self.host, self.port)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            theirs = await reader.readexactly(HANDSHAKE_LEN)
        except (asyncio.IncompleteReadError, OSError):
            writer.close()
            return
        if not theirs.startswith(PROTOCOL) or theirs[28:48] != self.info_hash:
            writer.close()  # another protocol (e.g. an encrypted handshake) or another torrent
            return
        writer.write(handshake(self.info_hash, self.peer_id))
        await writer.drain()
        await _hold(reader, writer)

    async def dial(self, target: tuple[str, int], deadline: float) -> None:
        """Connect to a client from this member's address; retry while the client starts up."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                reader, writer = await asyncio.open_connection(
                    target[0], target[1], local_addr=(self.host, 0)
                )
            except OSError:
                await asyncio.sleep(DIAL_RETRY_SECONDS)
                continue
            writer.write(handshake(self.info_hash, self.peer_id))
            try:
                await writer.drain()
                theirs = await reader.readexactly(HANDSHAKE_LEN)
            except (asyncio.IncompleteReadError, OSError):
                writer.close()
                await asyncio.sleep(DIAL_RETRY_SECONDS)
                continue
            if theirs[28:48] == self.info_hash:
                await _hold(reader, writer)
            return


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        raise argparse.ArgumentTypeError(f"{text}: swarm members live on loopback addresses only")
    return host, int(port)


async def run(
    info_hash: bytes, members: list[tuple[str, int]], dials: list[tuple[str, int]], dial_for: float
) -> None:
    peers = [Member(i, host, port, info_hash) for i, (host, port) in enumerate(members)]
    servers = [await peer.serve() for peer in peers]
    print("ready", flush=True)
    deadline = asyncio.get_running_loop().time() + dial_for
    tasks = [asyncio.create_task(peer.dial(target, deadline)) for peer in peers for target in dials]
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        for task in tasks:
            task.cancel()
        for server in servers:
            server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.detect.swarm")
    parser.add_argument("--info-hash", required=True, type=bytes.fromhex)
    parser.add_argument(
        "--member", action="append", required=True, type=_endpoint, help="ip:port to listen on"
    )
    parser.add_argument(
        "--dial", action="append", default=[], type=_endpoint, help="client ip:port to connect to"
    )
    parser.add_argument("--dial-for", type=float, default=30.0, help="seconds to keep retrying dials")
    args = parser.parse_args(argv)
    if len(args.info_hash) != 20:
        parser.error("--info-hash must be 20 bytes (40 hex digits)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.info_hash, args.member, args.dial, args.dial_for))
    return 0


if __name__ == "__main__":
    sys.exit(main())
