"""End-to-end rig: the real server (restartable, SQLite or PostgreSQL) and the real agent service.

KILL SAFETY: the agent and its stand-ins run in a private PID namespace (tests/support/enforce_procs.py):
the agent sees only what the test started there, so even an enforce-mode policy reaches nothing else.
The server runs outside it; both talk over 127.0.0.1 only. Every process is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from endpoint_agent.errors import StoreError
from endpoint_agent.report.store import StoredEvent, ViolationStore
from tests.support.enforce_procs import NsProcess, PidNamespace, python_env, python_sleeper
from tests.support.ports import free_port
from tests.support.reaper import die_with_parent
from tests.support.server import (
    LiveServer,
    make_keys,
    server_command,
    stop_server,
    subprocess_env,
    wait_healthy,
)
from tests.support.service_rig import clean_env

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, *, context: Callable[[], str] = str
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` (and the context) on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}\n{context()}")


class Server:
    """The real endpoint-server on a fixed port and database, which a test may stop and start again."""

    def __init__(
        self,
        workdir: Path,
        *,
        db_url: str | None,
        stale_after: float = 3.0,
        extra_args: Sequence[str] = (),
        replica_of: Server | None = None,
    ) -> None:
        """`replica_of`: another server on the same database, whose keys and secrets this one shares."""
        workdir.mkdir(parents=True, exist_ok=True)
        if replica_of is None:
            private_key, public_key = make_keys(workdir / "keys")
            self._tokens = {
                "ENDPOINT_SERVER_ADMIN_TOKEN": "adm-" + secrets.token_urlsafe(24),
                "ENDPOINT_SERVER_READER_TOKEN": "rdr-" + secrets.token_urlsafe(24),
                "ENDPOINT_SERVER_ENROLL_SECRET": "enr-" + secrets.token_urlsafe(24),
            }
        else:
            private_key, public_key = replica_of.live.private_key, replica_of.live.public_key
            self._tokens = dict(replica_of._tokens)
        self._extra_args = list(extra_args)
        self._db_url = db_url
        self._stale_after = stale_after
        self._workdir = workdir
        self._port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.live = LiveServer(
            base_url=f"http://127.0.0.1:{self._port}",
            admin_token=self._tokens["ENDPOINT_SERVER_ADMIN_TOKEN"],
            reader_token=self._tokens["ENDPOINT_SERVER_READER_TOKEN"],
            enroll_secret=self._tokens["ENDPOINT_SERVER_ENROLL_SECRET"],
            private_key=private_key,
            public_key=public_key,
            data_dir=workdir / "data",
            log_path=workdir / "server.log",
            process=None,  # type: ignore[arg-type]  # set by start()
        )

    @property
    def url(self) -> str:
        return self.live.base_url

    def start(self) -> None:
        cmd = server_command(self._port, self.live.data_dir, [self.live.public_key], self._db_url)
        cmd += ["--stale-after", str(self._stale_after), *self._extra_args]
        with self.live.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=subprocess_env(self._tokens),
                cwd=self._workdir,
                preexec_fn=die_with_parent(),
            )
        self.live.process = self._proc
        if not wait_healthy(self._proc, self.url):
            self.stop()
            raise RuntimeError(f"endpoint-server did not start:\n{self.live.log()}")

    def stop(self) -> None:
        if self._proc is not None:
            stop_server(self._proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown, whatever was in flight is cut."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            self._proc = None

    def publish(self, yaml_text: str) -> None:
        response = self.live.publish(yaml_text)
        assert response.status_code == 200, response.text

    def items(self, path: str, **params: str) -> list[dict[str, Any]]:
        """Every page of a reader listing (/violations, /agent-events)."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        with self.live.reader() as c:
            while True:
                query = {**params, "limit": "1000", **({"cursor": cursor} if cursor else {})}
                response = c.get(path, params=query)
                response.raise_for_status()
                body = response.json()
                out += body["items"]
                cursor = body["next_cursor"]
                if not cursor:
                    return out

    def hosts(self) -> list[dict[str, Any]]:
        with self.live.reader() as c:
            items: list[dict[str, Any]] = c.get("/hosts").json()["items"]
            return items

    def admin_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`endpoint-admin ARGS --server URL` as the security team runs it (reader token in the env)."""
        done = subprocess.run(
            [sys.executable, "-m", "endpoint_admin", *args, "--server", self.url],
            env=subprocess_env({"ENDPOINT_ADMIN_TOKEN": self.live.reader_token}),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, f"endpoint-admin {' '.join(args)}: {done.stderr}"
        return done


class Agent:
    """The real `endpoint-agent run` in server mode, inside the test's PID namespace."""

    def __init__(self, ns: PidNamespace, tmp: Path, server: Server, *, url: str | None = None) -> None:
        self.ns = ns
        self.tmp = tmp
        self.server = server
        self.url = url or server.url
        self.bin = tmp / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state = tmp / "state"
        self.config = tmp / "agent.yaml"
        self.logs: list[Path] = []
        self.proc: NsProcess | None = None
        self.configure()

    def configure(self, **extra: object) -> None:
        settings: dict[str, object] = {
            "notify": False,
            "break_glass_file": str(self.tmp / "break-glass"),
            "kill_grace_seconds": 2,
            "store_min_free_bytes": 0,  # a nearly full test disk must not change what is kept
            # The namespace holds a handful of processes: stopping one is a large share of them.
            "unsafe_kill_share": 1.0,
            "exec_gate": "off",  # the post-exec path; tests of the exec gate turn it on
            **extra,
        }
        self.config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))

    def start(self, *, scan_interval: float = 0.5) -> NsProcess:
        argv = [
            sys.executable, "-m", "endpoint_agent", "run", "--config", str(self.config),
            "--server", self.url, "--public-key", str(self.server.live.public_key),
            "--state-dir", str(self.state),
            "--scan-interval", str(scan_interval), "--sync-interval", "0.5", "--upload-interval", "0.5",
        ]  # fmt: skip
        log = self.tmp / f"agent-{len(self.logs)}.log"
        self.logs.append(log)
        env = clean_env(ENDPOINT_AGENT_ENROLL_SECRET=self.server.live.enroll_secret)
        with log.open("wb") as out:
            self.proc = self.ns.spawn(argv, env=env, stdout=out.fileno(), stderr=out.fileno(), cwd=str(REPO))
        return self.proc

    def standin(self, name: str) -> NsProcess:
        return self.ns.spawn(python_sleeper(name, self.bin), env=python_env())

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
            return data
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def running_policy(self, version: int) -> bool:
        s = self.status()
        running = self.proc is not None and s.get("pid") and s.get("state") == "running"
        return bool(running and (s.get("policy") or {}).get("version") == version)

    def events(self, kind: str = "violation") -> list[StoredEvent]:
        store = ViolationStore.open_existing(self.state / "violations.sqlite3")
        if store is None:
            return []
        with store:
            return store.events(kind=kind)  # type: ignore[arg-type]

    def dropped(self) -> int:
        """The store's dropped count; 0 until the agent has created it (file and schema)."""
        try:
            store = ViolationStore.open_existing(self.state / "violations.sqlite3")
            if store is None:
                return 0
            with store:
                return store.counts().dropped
        except StoreError:  # the file exists, its schema not yet: the agent is starting
            return 0

    def log_text(self) -> str:
        parts = [f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs if p.exists()]
        return "\n".join(parts) + f"\n--- server\n{self.server.live.log()}"


@contextlib.contextmanager
def pid_namespace() -> Iterator[PidNamespace]:
    with PidNamespace() as ns:
        yield ns
