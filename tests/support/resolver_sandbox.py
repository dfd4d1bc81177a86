"""A loopback-only network namespace with its own mount namespace, where /etc/resolv.conf is a
bind mount of a temporary file: what the DNS filter changes there is that file, nothing else.

    with ResolverSandbox(tmp_path / "resolv.conf", "nameserver 127.0.0.2\\n") as box:
        box.run(["curl", ...])       # inside both namespaces
        box.resolv_conf.read_text()  # the file the namespace sees as /etc/resolv.conf

Refuses to start when /etc/resolv.conf is a symlink here (a bind mount would follow it onto
the target, and the agent would take the systemd-resolved path): such a machine needs another
test layout. nftables changes inside the namespace affect nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.detect.sandbox import LoopbackNamespace, SandboxError, missing_requirements
from tests.support import die_with_parent


def resolver_sandbox_missing() -> str | None:
    reason = missing_requirements()
    if reason is not None:
        return reason
    if os.path.islink("/etc/resolv.conf"):
        return "/etc/resolv.conf is a symlink here; the bind-mount layout of the DNS tests needs a file"
    if not os.path.isfile("/etc/resolv.conf"):
        return "/etc/resolv.conf does not exist (nothing to bind-mount over)"
    return None


class ResolverSandbox(LoopbackNamespace):
    def __init__(self, resolv_conf: Path, content: str) -> None:
        super().__init__()
        self.resolv_conf = resolv_conf
        resolv_conf.write_text(content)

    @property
    def mnt_path(self) -> str:
        return f"/proc/{self.holder_pid}/ns/mnt"

    def _start(self) -> None:
        reason = resolver_sandbox_missing()
        if reason:
            raise SandboxError(reason)
        ready = self.resolv_conf.with_name(self.resolv_conf.name + ".ready")
        script = 'mount --bind "$1" /etc/resolv.conf && touch "$2" && exec sleep infinity'
        argv = ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]
        self._holder = self.reaper.track(
            subprocess.Popen(
                [*argv, str(self.resolv_conf), str(ready)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        )
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self._holder.poll() is not None or time.monotonic() > deadline:
                raise SandboxError(f"unshare --net --mount failed: {self._stderr(self._holder)}")
            time.sleep(0.01)
        host_mnt = os.readlink("/proc/self/ns/mnt")
        if os.readlink(self.mnt_path) == host_mnt:
            raise SandboxError("the holder is not in a mount namespace of its own")
        self.netns_id = os.readlink(self.ns_path)
        self.run(["ip", "link", "set", "lo", "up"])
        links = [link["ifname"] for link in json.loads(self.run(["ip", "-j", "link", "show"]))]
        if links != ["lo"]:
            raise SandboxError(f"namespace {self.netns_id} is not loopback-only: {links}")

    def _enter(self, argv: Sequence[str]) -> list[str]:
        # Entering a mount namespace moves to its root directory: keep ours.
        where = f"--wd={os.getcwd()}"
        return ["nsenter", f"--net={self.ns_path}", f"--mount={self.mnt_path}", where, "--", *argv]

    def call(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside; its result whatever the exit status."""
        return subprocess.run(self._enter(argv), capture_output=True, timeout=timeout, check=False)


__all__ = ["ResolverSandbox", "resolver_sandbox_missing"]
