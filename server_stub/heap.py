"""The garbage collector kept off the event loop: what lives as long as the server is frozen, and
full collections come on a clock, not on every ~25,000 objects that outlived two young ones.

A full collection walks every object the collector tracks, holding the GIL throughout: with a
fleet's node keys in memory (server_stub/keycache.py; a NodeIdentity per host)
that is ~0.2 s per 200,000 hosts on one of this machine's cores, several times that when the
machine is busy, and the event loop answers nothing meanwhile (server_stub/stallwatch.py shows
such stalls). Objects alive once the server has started -- the application, its modules, the
warmed key cache -- live until it stops, so after the key cache is warmed they are frozen
(gc.freeze: moved out of the collector's generations): later collections walk only what came
after. One collection first, so that no garbage is frozen with them; it is the last full walk
of that heap. Reference counting still frees a frozen object that is let go (an evicted or
forgotten key): only cycles among frozen objects would outlive their use, and the cache makes none.

What a serving fleet keeps after that is mostly its open connections (each a protocol, its
parser's bound callbacks, buffers: ~40 objects; a fleet's agents keep ~5 s of them open) and
the rate limiters' buckets: ~100,000 objects at 20,000 hosts, promoted as they outlive young
collections, so CPython started a full collection every ~10 s -- 100-250 ms with the loop
stopped -- and each freed nothing (measured: the stall watch's "0 garbage freed" on every one:
connections end by reference counting, not as cycles). So, once settled, the collector no longer
starts full collections by itself; `collect_old` runs one every FULL_EVERY seconds (the server
runs it on a thread, server_stub/app.py). Young collections are unchanged: short-lived cycles
are freed as before; only cycles that outlived them wait, at most FULL_EVERY, to be freed.
Done only for a fleet (FLEET keys or more warmed): below that a full collection is short anyway.
"""

from __future__ import annotations

import gc

FLEET = 1_000  # keys warmed at start from which the heap is settled (server_stub/app.py)
FULL_EVERY = 60.0  # seconds between full collections once settled
MANUAL = 1_000_000_000  # a full-collection threshold the collector never reaches by itself


def settle() -> int:
    """Collect once, freeze everything alive, and leave full collections to `collect_old`;
    how many objects are now frozen."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, MANUAL)
    return gc.get_freeze_count()


def collect_old() -> None:
    """A full collection, if settle() took them over (else the collector starts its own)."""
    if gc.get_threshold()[2] >= MANUAL:
        gc.collect(2)


def release(full_threshold: int = 10) -> None:
    """Full collections back to the collector (the server stops; CPython's default threshold)."""
    young, middle, full = gc.get_threshold()
    if full >= MANUAL:
        gc.set_threshold(young, middle, full_threshold)


__all__ = ["FULL_EVERY", "collect_old", "release", "settle"]
