"""`make demo`: the whole loop on this machine, in one command, in well under a minute.

    server (127.0.0.1, SQLite in a temp dir, fresh tokens and signing keys)
      <- endpoint-admin publish: policies/default.yaml in ENFORCE mode, made safe (see demo/policy.py)
      <- endpoint-agent run --server ...: enrolls, verifies the signed policy, scans, stops the stand-in,
         uploads the violation
      -> endpoint-admin violations / hosts: what the security team sees

Safe on anyone's workstation: the only block rule matches the demo's own stand-in (its unique name
and its private executable); every other rule only reports, so none of the user's programs is
stopped. The stand-in listens on 127.0.0.1 only. Everything the demo started is stopped by PID and
its temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from demo.policy import DEMO_RULE_ID, derive
from demo.procs import Children
from demo.standin import StandIn, free_bittorrent_port

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "policies" / "default.yaml"
API = "/api/v1"
_OUR_ENV_PREFIXES = ("ENDPOINT_AGENT_", "ENDPOINT_ADMIN_", "ENDPOINT_SERVER_")


class DemoFailed(Exception):
    pass


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def say(text: str) -> None:
    print(f"    {text}", flush=True)


def wait_until(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Demo:
    def __init__(self, tmp: Path, children: Children) -> None:
        self.tmp = tmp
        self.children = children
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_OUR_ENV_PREFIXES)}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.admin_token = "adm-" + secrets.token_urlsafe(24)
        self.reader_token = "rdr-" + secrets.token_urlsafe(24)
        self.enroll_secret = "enr-" + secrets.token_urlsafe(24)
        self.keys = tmp / "keys"
        self.state = tmp / "agent"
        self.config = tmp / "agent.yaml"
        self.url = ""

    # -- helpers -----------------------------------------------------------------------------

    def short(self, text: str) -> str:
        return text.replace(str(self.tmp), "$DEMO").replace(str(ROOT) + os.sep, "")

    def run(self, tool: str, args: Sequence[str], *, token: str | None = None, show: bool = True) -> str:
        """Run one of the three tools with ARGS, print the command and its indented output."""
        module = {
            "endpoint-admin": "endpoint_admin",
            "endpoint-agent": "endpoint_agent",
            "endpoint-server": "server_stub",
        }[tool]
        env = dict(self.env, **({"ENDPOINT_ADMIN_TOKEN": token} if token else {}))
        print(f"    $ {tool} {self.short(' '.join(args))}", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise DemoFailed(f"{tool} {args[0]} failed (exit {done.returncode}): {done.stderr.strip()}")
        if show:
            for line in done.stdout.rstrip().splitlines():
                print(f"      {self.short(line)}")
        return done.stdout

    def reader_get(self, path: str, **params: str) -> Any:
        with httpx.Client(base_url=self.url + API, timeout=10.0) as http:
            response = http.get(path, params=params, headers={"Authorization": f"Bearer {self.reader_token}"})
        response.raise_for_status()
        return response.json()

    # -- the story ---------------------------------------------------------------------------

    def start_server(self) -> None:
        step("Security team: a policy-signing key pair and the server (127.0.0.1, SQLite, fresh tokens)")
        self.run("endpoint-admin", ["keygen", "--out", str(self.keys)])
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        data_dir = self.tmp / "server"
        argv = [
            sys.executable, "-m", "server_stub", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--public-key", str(self.keys / "policy-signing.pub"),
            "--stale-after", "30", "--log-level", "warning",
        ]  # fmt: skip
        env = dict(
            self.env,
            ENDPOINT_SERVER_ADMIN_TOKEN=self.admin_token,
            ENDPOINT_SERVER_READER_TOKEN=self.reader_token,
            ENDPOINT_SERVER_ENROLL_SECRET=self.enroll_secret,
        )
        print(f"    $ endpoint-server {self.short(' '.join(argv[3:]))}", flush=True)
        proc = self.children.start(
            "endpoint-server", argv, env=env, cwd=self.tmp, log=self.tmp / "server.log"
        )

        def healthy() -> bool:
            if proc.poll() is not None:
                log = (self.tmp / "server.log").read_text(errors="replace").strip()
                raise DemoFailed(f"endpoint-server exited: {log.splitlines()[-1] if log else '?'}")
            try:
                return httpx.get(self.url + API + "/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("the server to answer", healthy, 30)
        say(f"server up at {self.url} (pid {proc.pid}); admin, reader and enroll tokens generated")

    def start_standin(self) -> StandIn:
        name = f"qbt-demo-{secrets.token_hex(3)}"
        step(f"A user starts a P2P client: stand-in '{name}' (a copy of python) on a BitTorrent port")
        problem: Exception | None = None
        for _attempt in range(3):  # another program may take the free port before the stand-in binds it
            port = free_bittorrent_port()
            try:
                standin = StandIn(self.tmp, name, port, self.children)
            except RuntimeError as exc:
                problem = exc
                continue
            say(f"pid {standin.pid} on 127.0.0.1:{port}, executable {self.short(str(standin.exe))}")
            return standin
        raise DemoFailed(f"the stand-in did not start: {problem}")

    def publish(self, standin: StandIn) -> None:
        policy = self.tmp / "policy.yaml"
        policy.write_text(derive(BASELINE, name=standin.name, exe=str(standin.exe)), encoding="utf-8")
        step(f"Publish {BASELINE.relative_to(ROOT)} in ENFORCE mode, made safe for this workstation")
        say("every block rule of the baseline only reports here; the one block rule,")
        say(f"'{DEMO_RULE_ID}', matches the stand-in's unique name AND its private executable")
        self.run(
            "endpoint-admin",
            ["publish", str(policy), "--server", self.url, "--key", str(self.keys / "policy-signing.key")],
            token=self.admin_token,
        )

    def start_agent(self) -> subprocess.Popen[bytes]:
        step("Workstation: the agent service enrolls, verifies the signed policy and scans every second")
        # notify off: no desktop pop-ups from a demo; break-glass path private to the demo;
        # unsafe_kill_share 1.0: the dry-run safety check must not veto the one rule that matches the stand-in
        # alone (checked by demo.policy.check_safe) on a machine or container with very few processes.
        self.config.write_text(
            f"notify: false\nbreak_glass_file: {self.tmp / 'break-glass'}\nunsafe_kill_share: 1.0\n"
            # the demo never gates the machine's execs (the exec gate marks every local mount)
            "exec_gate: off\n",
            encoding="utf-8",
        )
        args = [
            "run", "--config", str(self.config), "--server", self.url,
            "--public-key", str(self.keys / "policy-signing.pub"), "--state-dir", str(self.state),
            "--scan-interval", "1", "--sync-interval", "2", "--upload-interval", "1",
        ]  # fmt: skip
        print(
            f"    $ ENDPOINT_AGENT_ENROLL_SECRET=... endpoint-agent {self.short(' '.join(args))}", flush=True
        )
        env = dict(self.env, ENDPOINT_AGENT_ENROLL_SECRET=self.enroll_secret)
        proc = self.children.start(
            "endpoint-agent", [sys.executable, "-m", "endpoint_agent", *args], env=env, cwd=ROOT,
            log=self.tmp / "agent.log",
        )  # fmt: skip
        say(f"agent pid {proc.pid}; its log: $DEMO/agent.log")
        return proc

    def agent_log(self, *needles: str) -> list[str]:
        text = (
            (self.tmp / "agent.log").read_text(errors="replace") if (self.tmp / "agent.log").exists() else ""
        )
        return [line for line in text.splitlines() if any(n in line for n in needles)]

    def watch_enforcement(self, standin: StandIn, agent: subprocess.Popen[bytes]) -> None:
        started = time.monotonic()

        def stopped() -> bool:
            if agent.poll() is not None:
                raise DemoFailed(f"the agent exited ({agent.returncode}): {self.agent_log('ERROR')[-1:]}")
            return not standin.alive()

        wait_until("the agent to stop the stand-in", stopped, 30)
        code = standin.proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        say(f"the agent stopped the stand-in after {time.monotonic() - started:.1f}s ({how})")
        for line in self.agent_log("policy activated", "violation", "enrolled"):
            say("agent: " + self.short(line.split(": ", 1)[-1]))

        def uploaded() -> bool:
            items = self.reader_get("/violations", rule_id=DEMO_RULE_ID)["items"]
            return any(i.get("process_name") == standin.name for i in items)

        wait_until("the violation to reach the server", uploaded, 30)
        say("the violation is on the server")

    def report(self) -> None:
        step("On the workstation: endpoint-agent status")
        self.run("endpoint-agent", ["status", "--state-dir", str(self.state), "--config", str(self.config)])
        step(
            "Security team: endpoint-admin violations (every rule that fired here; only one stopped anything)"
        )
        self.run(
            "endpoint-admin", ["violations", "--server", self.url, "--since", "1h"], token=self.reader_token
        )
        step("Security team: endpoint-admin hosts")
        self.run("endpoint-admin", ["hosts", "--server", self.url], token=self.reader_token)

    def console(self) -> None:
        step("Security team: the web console (a named admin user, password from a 0600 file)")
        password = secrets.token_urlsafe(12)
        secret = self.tmp / "console-password"
        secret.touch(mode=0o600)
        secret.write_text(password + "\n")
        self.run(
            "endpoint-server",
            ["users", "add", "demo", "--role", "admin", "--password-file", str(secret),
             "--data-dir", str(self.tmp / "server")],
        )  # fmt: skip
        say(f"console: {self.url}/")
        say(f"sign in: user demo, password {password}")


def hold_open() -> None:
    """In a terminal, keep everything running until Enter; scripts and CI go straight on."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return
    with contextlib.suppress(EOFError):
        input("\n    Press Enter to stop the demo (server, agent) and clean up... ")


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill DEMO` cleans up like Ctrl-C
    tmp = Path(tempfile.mkdtemp(prefix="endpoint-demo-"))
    children = Children()
    started = time.monotonic()
    code = 0
    try:
        demo = Demo(tmp, children)
        demo.start_server()
        standin = demo.start_standin()
        demo.publish(standin)
        agent = demo.start_agent()
        demo.watch_enforcement(standin, agent)
        demo.report()
        demo.console()
        hold_open()
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        code = 130
    except (DemoFailed, RuntimeError, OSError, httpx.HTTPError, ValueError) as exc:
        print(f"\ndemo: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        step("Clean-up")
        for what in children.stop_all():
            say(f"stopped {what}")
        shutil.rmtree(tmp, ignore_errors=True)
        say(f"removed {tmp}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if code == 0:
        print(f"\nDone in {time.monotonic() - started:.0f}s.")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
