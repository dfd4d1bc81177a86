"""Socket-level stand-ins for P2P clients Debian does not package (run by a renamed interpreter).

Debian ships no Gnutella, Soulseek or IPFS client that runs headless, so these open the sockets
the real programs open, on the ports they use, in the pattern their protocols make an endpoint
see -- which is all the agent ever looks at (names come from the renamed interpreter's copy):

    gnutella  gtk-gnutella: TCP and UDP bound on one port (6346 by default, GUESS/UDP beside TCP),
              a TCP connection to each ultrapeer on the port it advertised, UDP pings to them
    soulseek  Nicotine+/SoulseekQt: a login connection to the server (2242), a listening peer port
              (2234), and connections to the peers whose files it browses or downloads
    ipfs      kubo: TCP and UDP (QUIC) bound on the swarm port (4001), and each peer dialled over
              TCP and QUIC on the port it announced

Stdlib only (it runs with -S -s from a copied interpreter). Prints "ready", then holds the
sockets until killed. Every address must be a loopback one.

    NAME -S -s standins.py gnutella --port 6346 --peer 127.9.1.1:6346 ...
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import sys
import time


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        raise argparse.ArgumentTypeError(f"{text}: loopback addresses only")
    return host, int(port)


def _tcp(target: tuple[str, int]) -> socket.socket | None:
    try:
        return socket.create_connection(target, timeout=5)
    except OSError:
        return None


def _udp_to(target: tuple[str, int], bind_port: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if bind_port is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", bind_port))
    sock.connect(target)
    return sock


def _listen(port: int, udp: bool) -> list[socket.socket]:
    tcp = socket.create_server(("127.0.0.1", port), reuse_port=True)
    socks = [tcp]
    if udp:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        u.bind(("127.0.0.1", port))
        socks.append(u)
    return socks


def run(args: argparse.Namespace) -> None:
    held: list[socket.socket] = []
    if args.kind == "gnutella":
        held += _listen(args.port, udp=True)
        for peer in args.peer:
            held += [s for s in [_tcp(peer)] if s]
        pings = [_udp_to(peer, bind_port=args.port) for peer in args.peer[:4]]
    elif args.kind == "soulseek":
        held += _listen(args.port, udp=False)
        held += [s for s in [_tcp(args.server)] if s]
        for peer in args.peer:
            held += [s for s in [_tcp(peer)] if s]
        pings = []
    else:  # ipfs
        held += _listen(args.port, udp=True)
        for peer in args.peer:
            held += [s for s in [_tcp(peer)] if s]
        pings = [_udp_to(peer, bind_port=args.port) for peer in args.peer]
    print("ready", flush=True)
    while True:  # keepalives, as each protocol sends them
        for sock in held[1:] + pings:
            with contextlib.suppress(OSError):
                sock.send(b"\x00")
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="standins")
    parser.add_argument("kind", choices=["gnutella", "soulseek", "ipfs"])
    parser.add_argument("--port", type=int, required=True, help="its own listening port")
    parser.add_argument("--peer", action="append", default=[], type=_endpoint)
    parser.add_argument("--server", type=_endpoint, help="soulseek: the login server")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
