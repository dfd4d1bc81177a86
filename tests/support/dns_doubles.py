"""Test doubles for the DNS filter's side effects: nft, the resolver switch, the asker lookup."""

from __future__ import annotations

from endpoint_agent.dns.asker import Asker
from endpoint_agent.enforce.netfilter import DELETE_SCRIPT
from endpoint_agent.types import Endpoint, ProcessInfo


class RecordingNft:
    """Keeps the scripts it was given; the table 'exists' between a table script and a delete."""

    def __init__(self, *, fail: bool = False) -> None:
        self.scripts: list[str] = []
        self.exists = False
        self.fail = fail

    def run(self, script: str) -> None:
        from endpoint_agent.enforce.netfilter import NetfilterError

        if self.fail:
            raise NetfilterError("nft failed (1): no such file or directory")
        self.scripts.append(script)
        if script == DELETE_SCRIPT:
            self.exists = False
        elif "table inet endpoint_agent {" in script:
            self.exists = True

    def list_table(self) -> str | None:
        return '{"nftables": []}' if self.exists else None


class FixedAsker:
    """Every query comes from this process (or from nobody known)."""

    def __init__(self, process: ProcessInfo | None) -> None:
        self.process = process
        self.lookups = 0

    def find(self, proto: str, client: Endpoint) -> Asker:
        self.lookups += 1
        if self.process is None:
            return Asker(ProcessInfo(pid=0, ppid=0, name="unknown", uid=1000), False)
        return Asker(self.process, True)


class FakeResolver:
    def __init__(self, upstreams: list[Endpoint]) -> None:
        self.upstreams = upstreams
        self.applied_to: Endpoint | None = None
        self.calls: list[str] = []

    def original_upstreams(self) -> list[Endpoint]:
        return list(self.upstreams)

    def apply(self, listen: Endpoint) -> None:
        self.calls.append("apply")
        self.applied_to = listen

    def restore(self) -> bool:
        self.calls.append("restore")
        was, self.applied_to = self.applied_to, None
        return was is not None

    @property
    def applied(self) -> bool:
        return self.applied_to is not None
