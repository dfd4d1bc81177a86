"""The garbage collector kept off the event loop: what lives as long as the server is frozen.

A full collection walks every object the collector tracks, holding the GIL throughout: with a
fleet's node keys in memory (server_stub/keycache.py; a HostRecord and its counters per host)
that is ~0.2 s per 200,000 hosts on one of this machine's cores, several times that when the
machine is busy, and the event loop answers nothing meanwhile (server_stub/stallwatch.py shows
such stalls). Objects alive once the server has started -- the application, its modules, the
warmed key cache -- live until it stops, so after the key cache is warmed they are frozen
(gc.freeze: moved out of the collector's generations): later collections walk only what came
after. One collection first, so that no garbage is frozen with them; it is the last full walk
of that heap. Reference counting still frees a frozen object that is let go (an evicted or
forgotten key): only cycles among frozen objects would outlive their use, and the cache makes none.
Done only for a fleet (FLEET keys or more warmed): below that a full collection is short anyway.
"""

from __future__ import annotations

import gc

FLEET = 1_000  # keys warmed at start from which the heap is settled (server_stub/app.py)


def settle() -> int:
    """Collect once, then freeze everything alive; how many objects are now frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


__all__ = ["settle"]
