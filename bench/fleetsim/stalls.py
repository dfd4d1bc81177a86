"""What the server's stall watch logged during a step (server_stub/stallwatch.py), summed up;
and whether its node-key cache was cleared meanwhile (server_stub/watcher.py).

    reader = StallLog(path)          # the server's output file
    summary = reader.since_last()    # the stalls logged since the previous call
    summary.line()                   # one printable line; summary.worst: the longest stalls' lines

Each logged stall says how its time went: the loop thread running Python, waiting for a CPU
(the machine busy), or blocked (the GIL held by another thread, a blocking call); here they are
added up so a step's tail can be told apart: the server's own work, or a starved server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from server_stub.stallwatch import PREFIX
from server_stub.watcher import CLEARED

_LINE = re.compile(
    PREFIX + r" (?P<ms>\d+) ms: loop thread ran (?P<ran>\d+) ms, waited for a CPU (?P<wait>\d+) ms, "
    r"blocked (?P<blocked>\d+) ms; other threads ran (?P<others>\d+) ms, waited for a CPU "
    r"(?P<others_wait>\d+) ms; gc (?P<gc>\d+) ms"
    r"(?:.*?; hypervisor steal (?P<steal>\d+) ms, major faults (?P<faults>\d+))?"
)
WORST = 3


@dataclass
class StallSummary:
    count: int = 0
    total_ms: float = 0.0
    longest_ms: float = 0.0
    ran_ms: float = 0.0
    wait_ms: float = 0.0
    blocked_ms: float = 0.0
    others_ms: float = 0.0
    others_wait_ms: float = 0.0
    gc_ms: float = 0.0
    steal_ms: float = 0.0  # CPU time the hypervisor took from the machine during the stalls
    faults: int = 0  # the server's major page faults during the stalls
    worst: list[tuple[float, str]] = field(default_factory=list)  # (ms, the logged line)
    # The node-key cache dropped (the change feed unread too long): every key looked up again.
    cleared: list[str] = field(default_factory=list)

    def add(self, match: re.Match[str], text: str) -> None:
        ms = float(match["ms"])
        self.count += 1
        self.total_ms += ms
        self.longest_ms = max(self.longest_ms, ms)
        self.ran_ms += float(match["ran"])
        self.wait_ms += float(match["wait"])
        self.blocked_ms += float(match["blocked"])
        self.others_ms += float(match["others"])
        self.others_wait_ms += float(match["others_wait"])
        self.gc_ms += float(match["gc"])
        self.steal_ms += float(match["steal"] or 0)
        self.faults += int(match["faults"] or 0)
        self.worst = sorted([*self.worst, (ms, text)], reverse=True)[:WORST]

    def line(self, threshold_ms: float) -> str:
        if not self.cleared:
            return self._stalls(threshold_ms)
        cleared = f"    server key cache CLEARED {len(self.cleared)} time(s): {self.cleared[0]}"
        return self._stalls(threshold_ms) + "\n" + cleared

    def _stalls(self, threshold_ms: float) -> str:
        if not self.count:
            return f"    server event-loop stalls over {threshold_ms:g} ms: none"
        return (
            f"    server event-loop stalls over {threshold_ms:g} ms: {self.count}, "
            f"{self.total_ms / 1e3:.1f} s in all, longest {self.longest_ms:.0f} ms; of their time "
            f"the loop thread ran {self.ran_ms / 1e3:.1f} s, "
            f"waited for a CPU {self.wait_ms / 1e3:.1f} s, was blocked {self.blocked_ms / 1e3:.1f} s "
            f"(other server threads ran {self.others_ms / 1e3:.1f} s, waited for a CPU "
            f"{self.others_wait_ms / 1e3:.1f} s; gc {self.gc_ms / 1e3:.1f} s); meanwhile the "
            f"hypervisor took {self.steal_ms / 1e3:.1f} s of the machine's CPU, the server had "
            f"{self.faults} major page faults"
        )


class StallLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._offset = path.stat().st_size if path is not None and path.exists() else 0

    def since_last(self) -> StallSummary:
        summary = StallSummary()
        if self.path is None:
            return summary
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return summary
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += end
        for text in data[:end].decode("utf-8", "replace").splitlines():
            match = _LINE.search(text)
            if match is not None:
                summary.add(match, text[match.start() :])
            elif CLEARED in text:
                summary.cleared.append(text[text.index(CLEARED) :])
        return summary


__all__ = ["StallLog", "StallSummary"]
