"""Detection cases on real programs, shared by the tests and `make detect-report`.

    sandbox       LoopbackNamespace: a network namespace with nothing but `lo`; processes in it
    tracker       a minimal HTTP BitTorrent tracker on 127.0.0.1 (bencoded compact peer lists)
    swarm         idle BitTorrent swarm members on 127.0.1.x (handshake only)
    clients       transmission-cli and aria2c with DHT/LPD/PEX/UPnP off; mktorrent payloads
    workloads     loopback programs of the benign corpus (HTTP, sinks, clients, throttled files)
    probe         the agent's scan pipeline in report mode, one JSON line per scan
    observe       reading the probe: first peer connection, first P2P finding, per process
    p2p_cases     the swarms: named clients, renamed clients on moved ports, inside and host views
    benign_cases  the benign corpus: busy programs that must give no P2P finding

Network safety: every program here binds and connects to loopback addresses only, and runs
inside a loopback-only namespace; nothing can reach past the machine.
"""
