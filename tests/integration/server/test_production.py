"""The server in production: TLS with an internal CA (agent --ca-bundle), /docs, every status code in
the OpenAPI document, Prometheus /metrics, JSON logs with fields on server and agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import SpawnFn
from tests.support.server import (
    REPO_ROOT,
    LiveServer,
    run_server,
    stop_server,
    subprocess_env,
    written_behind,
)
from tests.support.tls import make_tls

ERROR_CODES = {"400", "401", "403", "404", "409", "413", "422", "429", "503"}


def standin_policy(name: str) -> str:
    # monitor mode: the agent signals nothing; the rule matches only this test's uniquely named stand-in
    return (
        "name: tls-test\nversion: 1\nmode: monitor\nrules:\n"
        f"  - id: tls-standin\n    category: p2p\n    action: block\n    process:\n      name: [{name}]\n"
    )


def agent_env() -> dict[str, str]:
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("ENDPOINT_AGENT_")}
    env["ENDPOINT_AGENT_ENFORCE_SCOPE_PID"] = str(os.getpid())  # nothing outside this test is ever in scope
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_agent_reaches_a_tls_server_through_its_ca_bundle_with_json_logs(
    tmp_path: Path, spawn: SpawnFn
) -> None:
    tls = make_tls(tmp_path / "tls")
    other_ca = make_tls(tmp_path / "other", label="other").ca
    name = "tls-" + uuid.uuid4().hex[:8]
    standin = spawn(name)
    with run_server(
        tmp_path / "server", tls=tls, extra_args=["--log-format", "json", "--log-level", "info"]
    ) as srv:
        assert srv.base_url.startswith("https://")
        assert srv.publish(standin_policy(name)).status_code == 200
        secret = tmp_path / "enroll.secret"
        secret.write_text(srv.enroll_secret + "\n")
        secret.chmod(0o600)

        def agent(state: Path, ca: Path, log: Path) -> subprocess.Popen[bytes]:
            argv = [
                sys.executable, "-m", "endpoint_agent", "run", "--server", srv.base_url,
                "--ca-bundle", str(ca), "--enroll-secret-file", str(secret),
                "--public-key", str(srv.public_key), "--state-dir", str(state),
                "--log-format", "json", "--no-process-events", "--no-notify", "--scan-interval", "0.5",
                "--sync-interval", "0.5", "--upload-interval", "0.5",
                "--break-glass-file", str(tmp_path / "bg"),
                "--exec-gate", "off",  # this agent runs in the machine's mount namespace: never gate it
            ]  # fmt: skip
            with log.open("wb") as out:
                return subprocess.Popen(argv, stdout=out, stderr=out, env=agent_env(), cwd=REPO_ROOT)

        # A CA that did not sign the server's certificate: nothing is sent, the reason is logged.
        wrong_log = tmp_path / "wrong.log"
        wrong = agent(tmp_path / "wrong-state", other_ca, wrong_log)
        try:
            assert wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in wrong_log.read_text(), wrong), (
                wrong_log.read_text()
            )
        finally:
            stop_server(wrong)
        with srv.reader() as reader:
            assert reader.get("/hosts").json()["items"] == []
        # the admin tool trusts the internal CA the same way, and refuses a server its CA did not sign
        for ca, code in ((tls.ca, 0), (other_ca, 1)):
            admin = subprocess.run(
                [sys.executable, "-m", "endpoint_admin", "hosts", "--server", srv.base_url,
                 "--ca-bundle", str(ca)],
                capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                env=subprocess_env({"ENDPOINT_ADMIN_TOKEN": srv.reader_token}),
            )  # fmt: skip
            assert admin.returncode == code, admin.stderr
            assert "HOSTNAME" in admin.stdout if code == 0 else "CERTIFICATE_VERIFY_FAILED" in admin.stderr

        log = tmp_path / "agent.log"
        good = agent(tmp_path / "state", tls.ca, log)
        try:

            def uploaded() -> bool:
                with srv.reader() as reader:
                    items = reader.get("/violations", params={"rule_id": "tls-standin"}).json()["items"]
                return any(i["pid"] == standin.pid for i in items)

            assert wait_for(uploaded, good), log.read_text() + srv.log()
        finally:
            stop_server(good)
        assert standin.popen.poll() is None  # monitor mode: the stand-in was never signalled

    host_id = json.loads((tmp_path / "state" / "enrollment.json").read_text())["host_id"]
    # agent: a JSON line for the violation, with rule_id, pid and (once enrolled) host_id
    agent_lines = [e for e in json_lines(log.read_text()) if e.get("rule_id") == "tls-standin"]
    assert agent_lines, log.read_text()
    assert {(e["pid"], e.get("host_id")) for e in agent_lines} == {(standin.pid, host_id)}
    # server: the same fields on its audit line for the stored violation
    server_lines = [e for e in json_lines(srv.log()) if e.get("rule_id") == "tls-standin"]
    assert server_lines and all(e["host_id"] == host_id and e["pid"] == standin.pid for e in server_lines)


def wait_for(ok: Any, proc: subprocess.Popen[bytes], rounds: int = 600) -> bool:
    for _ in range(rounds):
        if ok():
            return True
        if proc.poll() is not None:
            return bool(ok())
        time.sleep(0.1)
    return False


def test_bad_tls_flags_are_one_line(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    other = make_tls(tmp_path / "other")
    for args, fragment in (
        (["--tls-cert", str(tls.cert)], "give both or neither"),
        (["--tls-cert", str(tls.cert), "--tls-key", str(tmp_path / "missing.key")], "not found"),
        (["--tls-cert", str(tls.cert), "--tls-key", str(other.key)], "cannot load the certificate and key"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "server_stub", "serve", "--data-dir", str(tmp_path / "d"), "--public-key",
             str(tmp_path / "k.pub"), *args],
            capture_output=True, text=True, timeout=60, env=subprocess_env(), cwd=REPO_ROOT,
        )  # fmt: skip
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], done.stderr


def test_docs_and_every_status_code_in_the_openapi_document(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.base_url, timeout=30) as http:
        schema = http.get("/openapi.json").json()
        docs = http.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "<script" not in docs.text  # nothing loaded from a CDN
    documented: set[str] = set()
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            assert f"{method.upper()} {path}" in docs.text
            codes = set(op["responses"])
            documented |= codes
            assert "400" in codes and ("429" in codes or path == "/api/v1/healthz"), (method, path)
            if op.get("security"):
                assert {"401", "403", "503"} <= codes, (method, path)
            if op.get("requestBody"):
                assert {"413", "422"} <= codes, (method, path)
    assert documented >= ERROR_CODES
    assert {"404", "409"} <= set(schema["paths"]["/api/v1/policy/rollback"]["post"]["responses"])
    assert "409" in schema["paths"]["/api/v1/policy"]["put"]["responses"]


def scrape(server: LiveServer, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        return http.get("/metrics", headers=headers)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_scraped_and_parsed(tmp_path: Path) -> None:
    with run_server(tmp_path / "s", extra_args=["--stale-after", "3600"]) as server:
        assert scrape(server, None).status_code == 401
        before = samples(scrape(server, server.reader_token).text)
        assert before[("endpoint_server_hosts", (("state", "ok"),))] == 0
        hosts = [server.enroll("ws-m1"), server.enroll("ws-m2")]
        now = datetime.now(UTC).isoformat()
        events = [
            {"kind": "violation", "event_id": str(uuid.uuid4()), "detected_at": now, "rule_id": "r",
             "category": "p2p", "action": "killed", "pid": 7, "process_name": "x", "reason": "test",
             "policy_version": 1}
            for _ in range(3)
        ]  # fmt: skip
        with server.client(hosts[0].node_key) as c:
            assert c.post("/events", json={"events": events}).status_code == 200, c
            beat = {"agent_version": "0.1.0", "policy_version": 1, "mode": "enforce",
                    "counters": {"queue_pending": 5, "dropped_events": 2}}  # fmt: skip
            assert c.post("/heartbeat", json=beat).status_code == 200
        with server.client(hosts[1].node_key) as c:
            beat = {
                "agent_version": "0.1.0",
                "policy_version": 1,
                "mode": "monitor",
                "counters": {"queue_pending": 4},
            }
            assert c.post("/heartbeat", json=beat).status_code == 200
        response = written_behind(
            lambda: scrape(server, server.admin_token),
            lambda r: samples(r.text).get(("endpoint_server_agent_queue_pending", ())) == 9,
        )
        assert response.headers["content-type"].startswith("text/plain")
        after = samples(response.text)
    assert after[("endpoint_server_events_received_total", (("kind", "violation"),))] == 3
    assert after[("endpoint_server_hosts", (("state", "ok"),))] == 2
    assert after[("endpoint_server_hosts", (("state", "stale"),))] == 0
    assert after[("endpoint_server_hosts_by_mode", (("mode", "enforce"),))] == 1
    assert after[("endpoint_server_hosts_by_mode", (("mode", "monitor"),))] == 1
    assert after[("endpoint_server_agent_queue_pending", ())] == 9
    assert after[("endpoint_server_agent_events_dropped", ())] == 2
    assert after[("endpoint_server_requests_total", (("method", "GET"), ("status", "401")))] == 1
