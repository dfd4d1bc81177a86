"""endpoint-admin as a user runs it (subprocess) against the real server."""

from __future__ import annotations

import csv
import io
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import REPO_ROOT, LiveServer, run_server, subprocess_env
from tests.support.server_events import agent_event, post, violation
from tests.support.server_policies import policy_yaml


def admin(
    *args: str, token: str | None = None, check_code: int | None = 0
) -> subprocess.CompletedProcess[str]:
    env = {"ENDPOINT_ADMIN_TOKEN": token or ""}
    result = subprocess.run(
        [sys.executable, "-m", "endpoint_admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=subprocess_env(env),
    )
    if check_code is not None:
        assert result.returncode == check_code, (args, result.stdout, result.stderr)
    return result


def one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml(1))
    return path


def test_keygen_sign_verify(tmp_path: Path, policy_file: Path) -> None:
    keys = tmp_path / "keys"
    out = admin("keygen", "--out", str(keys)).stdout
    key, pub = keys / "policy-signing.key", keys / "policy-signing.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and pub.exists()
    assert "key id:" in out
    one_line_error(admin("keygen", "--out", str(keys), check_code=2), "already exists")

    envelope = admin(
        "sign", str(policy_file), "--key", str(key), "--fleet-id", "fleet-a", "--expires-in", "30d"
    )
    signed = tmp_path / "policy.envelope.json"
    signed.write_text(envelope.stdout)
    ok = admin("verify", str(signed), "--public-key", str(pub)).stdout
    assert ok.startswith("OK: policy 'corporate-baseline' version 1, fleet 'fleet-a'")

    out_file = tmp_path / "out.json"
    admin("sign", str(policy_file), "--key", str(key), "--out", str(out_file))
    assert admin("verify", str(out_file), "--public-key", str(pub)).returncode == 0

    other = tmp_path / "other"
    admin("keygen", "--out", str(other))
    failed = admin("verify", str(signed), "--public-key", str(other / "policy-signing.pub"), check_code=1)
    one_line_error(failed, "verification FAILED: envelope is not signed by any trusted key")

    tampered = tmp_path / "tampered.json"
    doc = json.loads(signed.read_text())
    doc["payload"] = doc["payload"][:-8] + ("A" * 8 if not doc["payload"].endswith("A" * 8) else "B" * 8)
    tampered.write_text(json.dumps(doc))
    one_line_error(admin("verify", str(tampered), "--public-key", str(pub), check_code=1), "FAILED")


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, policy_file: Path) -> None:
    admin("keygen", "--out", str(tmp_path / "k"))
    key = str(tmp_path / "k" / "policy-signing.key")
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text(
        "name: x\nversion: 1\nrules:\n  - id: r1\n    action: explode\n    process: {name: a}\n"
    )
    cases = [
        (("sign", str(bad_policy), "--key", key), "r1"),
        (("sign", str(tmp_path / "missing.yaml"), "--key", key), "missing.yaml"),
        (("sign", str(policy_file), "--key", str(tmp_path / "nokey")), "nokey"),
        (("sign", str(policy_file), "--key", key, "--expires-in", "soon"), "invalid duration"),
        (("rollout", "--server", "http://127.0.0.1:9", "--percent", "150"), "0-100"),
        (("hosts", "--server", "http://127.0.0.1:9"), "ENDPOINT_ADMIN_TOKEN"),
        (("hosts", "--server", "ftp://x", "--token", "t"), "--server"),
        (("frobnicate",), "invalid choice"),
    ]
    for args, fragment in cases:
        one_line_error(admin(*args, check_code=2), fragment)


def test_unreachable_server_exits_1(tmp_path: Path) -> None:
    from tests.support.ports import free_port

    result = admin("hosts", "--server", f"http://127.0.0.1:{free_port()}", token="t", check_code=1)
    one_line_error(result, "cannot reach server")


def test_publish_rollout_rollback(live_server: LiveServer, tmp_path: Path, policy_file: Path) -> None:
    server, key, token = live_server.base_url, str(live_server.private_key), live_server.admin_token
    out = admin("publish", str(policy_file), "--server", server, "--key", key, token=token).stdout
    assert "published version 1 to 100% of hosts" in out
    conflict = admin("publish", str(policy_file), "--server", server, "--key", key, token=token, check_code=2)
    one_line_error(conflict, "409 policy version 1 is not higher than the newest published version 1")
    denied = admin("publish", str(policy_file), "--server", server, "--key", key, token="wrong", check_code=2)
    one_line_error(denied, "401 invalid credentials")
    publish = ("publish", str(policy_file), "--server", server, "--key", key)
    reader = admin(*publish, token=live_server.reader_token, check_code=2)
    one_line_error(reader, "403")

    v2 = tmp_path / "v2.yaml"
    v2.write_text(policy_yaml(2))
    out = admin("publish", str(v2), "--server", server, "--key", key, "--rollout", "10", token=token).stdout
    assert "published version 2 to 10% of hosts (previous version: 1)" in out
    assert "rolled out to 50%" in admin("rollout", "--server", server, "--percent", "50", token=token).stdout
    out = admin("rollback", "--server", server, token=token).stdout
    assert "rolled back version 2; version 1 is current for every host" in out
    with live_server.admin() as c:
        versions = c.get("/policy/versions").json()["items"]
    assert [(v["version"], v["rolled_back_at"] is not None) for v in versions] == [(2, True), (1, False)]


def test_violations_in_three_formats_streams_every_page(live_server: LiveServer) -> None:
    hosts = [live_server.enroll("ws-1"), live_server.enroll("ws-2")]
    sent = [violation(rule_id=f"r{i}", process_name=f"proc-{i}") for i in range(7)]
    post(live_server, hosts[0], sent[:4])
    post(live_server, hosts[1], sent[4:])
    post(live_server, hosts[1], [agent_event()])
    common = ("--server", live_server.base_url, "--page-size", "2")
    token = live_server.reader_token

    ndjson = admin("violations", *common, "--format", "ndjson", token=token).stdout.splitlines()
    assert [json.loads(line)["event_id"] for line in ndjson] == [e["event_id"] for e in sent]

    rows = list(
        csv.DictReader(io.StringIO(admin("violations", *common, "--format", "csv", token=token).stdout))
    )
    assert [r["rule_id"] for r in rows] == [f"r{i}" for i in range(7)]
    assert {r["hostname"] for r in rows} == {"ws-1", "ws-2"} and rows[0]["pid"] == "4242"

    table = admin("violations", *common, "--since", "24h", token=token).stdout.splitlines()
    assert table[0].startswith("DETECTED") and len(table) == 8
    assert all(f"proc-{i}" in table[i + 1] for i in range(7))

    filtered = admin("violations", *common, "--host", "ws-2", "--format", "ndjson", token=token).stdout
    assert len(filtered.splitlines()) == 3
    events = admin("agent-events", "--server", live_server.base_url, token=token).stdout.splitlines()
    assert [json.loads(e)["type"] for e in events] == ["events_dropped"]

    summary = admin("summary", "--server", live_server.base_url, "--since", "7d", token=token).stdout
    assert "violations from" in summary and ": 7" in summary.splitlines()[0] and "ws-2" in summary


def test_forensic_fields_in_csv_and_ndjson_and_the_severity_filter(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-forensic")
    evidence = [{"attribute": "name", "pattern": "qbittorrent*", "value": "qbittorrent"}]
    forensic = {"sha256": "ab" * 32, "cmdline": "=qbittorrent --x", "ppid": 7, "parent_name": "bash"}
    post(live_server, host, [violation(severity="high", evidence=evidence, os="Debian", **forensic)])
    post(live_server, host, [violation(severity="low")])
    common = ("--server", live_server.base_url, "--severity", "high")
    token = live_server.reader_token
    [row] = list(
        csv.DictReader(io.StringIO(admin("violations", *common, "--format", "csv", token=token).stdout))
    )
    assert (row["severity"], row["sha256"], row["ppid"], row["parent_name"], row["os"]) == (
        "high", "ab" * 32, "7", "bash", "Debian",
    )  # fmt: skip
    assert row["cmdline"] == "'=qbittorrent --x"  # a spreadsheet does not read it as a formula
    assert json.loads(row["evidence"]) == evidence and row["host_id"] == host.host_id
    [line] = admin("violations", *common, "--format", "ndjson", token=token).stdout.splitlines()
    item = json.loads(line)
    assert item["evidence"] == evidence and item["hostname"] == "ws-forensic" and item["severity"] == "high"
    assert "SEVERITY" in admin("violations", *common, token=token).stdout.splitlines()[0]


def test_hosts_marks_stale_ones(tmp_path: Path) -> None:
    with run_server(tmp_path / "s", extra_args=["--stale-after", "0"]) as server:
        server.enroll("ws-stale")
        out = admin("hosts", "--server", server.base_url, token=server.reader_token).stdout.splitlines()
        assert out[0].split()[:4] == ["HOSTNAME", "HOST_ID", "LAST_SEEN", "STATE"]
        assert "ws-stale" in out[1] and "STALE" in out[1]
        as_json = admin("hosts", "--server", server.base_url, "--format", "ndjson", token=server.reader_token)
        assert json.loads(as_json.stdout)["stale"] is True


def test_endpoint_admin_hosts_follows_every_page(live_server: LiveServer) -> None:
    enrolled = [live_server.enroll(f"ws-{i:02d}") for i in range(5)]
    with live_server.client(enrolled[3].node_key) as c:
        beat = {"agent_version": "1.0", "mode": "monitor", "policy_version": 9}
        assert c.post("/heartbeat", json=beat).status_code == 200
    server, token = live_server.base_url, live_server.reader_token
    out = admin("hosts", "--server", server, "--page-size", "2", "--format", "ndjson", token=token).stdout
    assert [json.loads(line)["hostname"] for line in out.splitlines()] == [f"ws-{i:02d}" for i in range(5)]
    table = admin("hosts", "--server", server, "--page-size", "1", token=token).stdout.splitlines()
    assert table[0].split()[0] == "HOSTNAME" and len(table) == 6
    only = admin("hosts", "--server", server, "--mode", "monitor", "--policy-version", "9", token=token)
    assert [line.split()[0] for line in only.stdout.splitlines()[1:]] == ["ws-03"]
    prefix = admin("hosts", "--server", server, "--prefix", "ws-04", "--format", "csv", token=token)
    assert len(prefix.stdout.splitlines()) == 2 and "ws-04" in prefix.stdout
    assert admin("hosts", "--server", server, "--stale", "--format", "ndjson", token=token).stdout == ""


# --- day one for an administrator ---------------------------------------------------------------


def test_fixed_value_filters_are_checked_before_asking(tmp_path: Path) -> None:
    # no server at all: a typo is found before any request
    for args, fragment in (
        (
            ("violations", "--action", "kiled"),
            "invalid action 'kiled': expected one of reported, would_block",
        ),
        (("agent-events", "--type", "Circuit Open"), "invalid type 'Circuit Open'"),
        (("violations", "--severity", "urgent"), "invalid severity 'urgent': expected one of low, medium"),
        (("hosts", "--format", "xml"), "invalid choice: 'xml'"),
    ):
        result = admin(*args, "--server", "http://127.0.0.1:9", token="t", check_code=2)
        one_line_error(result, fragment)
        assert result.stdout == ""


def test_server_url_with_or_without_api_prefix_token_file_and_policies(
    live_server: LiveServer, tmp_path: Path, policy_file: Path
) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(live_server.admin_token + "\n")
    for server in (live_server.base_url, live_server.api_url, live_server.api_url + "/"):
        admin(
            "policies", "--server", server, "--token-file", str(token_file), "--format", "ndjson"
        )  # both spellings reach the API
    policy_file.write_text(policy_yaml(1))
    admin(
        "publish", str(policy_file), "--key", str(live_server.private_key), "--server", live_server.api_url,
        "--token-file", str(token_file), "--rollout", "25",
    )  # fmt: skip
    policy_file.write_text(policy_yaml(2))
    admin(
        "publish", str(policy_file), "--key", str(live_server.private_key), "--server", live_server.base_url,
        "--token-file", str(token_file),
    )  # fmt: skip
    table = admin("policies", "--server", live_server.base_url, "--token-file", str(token_file)).stdout
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["VERSION", "POLICY", "FLEET", "ROLLOUT"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "1"]
    assert "100%" in lines[1] and "25%" in lines[2]
    rows = list(csv.DictReader(io.StringIO(admin(
        "policies", "--server", live_server.base_url, "--token-file", str(token_file), "--format", "csv"
    ).stdout)))  # fmt: skip
    assert [(r["version"], r["rollout_percent"]) for r in rows] == [("2", "100"), ("1", "25")]
    one_line_error(
        admin(
            "policies", "--server", live_server.base_url, "--token-file", str(tmp_path / "nope"), check_code=2
        ),
        "--token-file",
    )
    one_line_error(
        admin("policies", "--server", live_server.base_url, "--token", "x", "--token-file", str(token_file),
              check_code=2),
        "one way only",
    )  # fmt: skip


def test_summary_text_shows_what_json_shows(live_server: LiveServer) -> None:
    host = live_server.enroll("ws-sum")
    post(
        live_server,
        host,
        [violation(rule_id="r-a", action="killed"), violation(rule_id="r-b", action="reported")],
    )
    common = ("summary", "--server", live_server.base_url, "--since", "2020-01-01T00:00:00Z")
    data = json.loads(admin(*common, "--json", token=live_server.reader_token).stdout)
    text = admin(*common, token=live_server.reader_token).stdout
    assert text.splitlines()[0] == f"violations from {data['since']} to {data.get('until') or 'now'}: 2"
    for key, label in (("by_rule", "rule_id"), ("by_category", "category"), ("by_action", "action"),
                       ("by_host", "hostname")):  # fmt: skip
        assert data[key], key
        for row in data[key]:
            assert any(
                line.split()[:2] == [str(row[label]), str(row["count"])] for line in text.splitlines()
            ), (key, row, text)


def test_hosts_csv_has_clean_values(tmp_path: Path) -> None:
    with run_server(tmp_path / "s", extra_args=["--stale-after", "0"]) as server:
        server.enroll("ws-csv")
        out = admin("hosts", "--server", server.base_url, "--format", "csv", token=server.reader_token).stdout
        (row,) = csv.DictReader(io.StringIO(out))
        assert row["hostname"] == "ws-csv" and row["stale"] == "true"
        assert row["agent_version"] == row["policy_version"] == row["mode"] == ""


def test_a_failure_after_the_first_page_leaves_no_half_csv(tmp_path: Path) -> None:
    """A server that answers page 1 and fails on page 2: nothing on stdout, one line, exit 1."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    first = {"items": [violation(rule_id="r1")], "next_cursor": "c2"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            second = "cursor=c2" in self.path
            body = json.dumps({"error": "database unavailable"} if second else first).encode()
            self.send_response(503 if second else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        result = admin("violations", "--server", url, "--format", "csv", token="t", check_code=1)
        assert result.stdout == ""
        one_line_error(result, "503 database unavailable")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
