"""GET /hosts a page at a time on the real server (endpoint-admin hosts: test_admin_cli.py)."""

from __future__ import annotations

from tests.support.server import LiveServer


def beat(server: LiveServer, node_key: str, mode: str, version: int) -> None:
    body = {"agent_version": "1.0", "mode": mode, "policy_version": version}
    with server.client(node_key) as c:
        assert c.post("/heartbeat", json=body).status_code == 200


def test_hosts_pages_with_a_cursor_and_filters(live_server: LiveServer) -> None:
    enrolled = [live_server.enroll(f"ws-{i:02d}") for i in range(5)]
    for i, host in enumerate(enrolled):
        beat(live_server, host.node_key, "monitor" if i % 2 else "enforce", 7 if i < 3 else 8)
    with live_server.reader() as c:
        whole = c.get("/hosts").json()  # no paging asked: the first (here only) page, as before
        assert [h["hostname"] for h in whole["items"]] == [f"ws-{i:02d}" for i in range(5)]
        assert whole["next_cursor"] is None
        names, cursor, pages = [], None, 0
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = c.get("/hosts", params=params).json()
            names += [h["hostname"] for h in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert names == [f"ws-{i:02d}" for i in range(5)] and pages == 3

        def filtered(**params: str) -> list[str]:
            answer = c.get("/hosts", params=params)
            assert answer.status_code == 200, answer.text
            return [h["hostname"] for h in answer.json()["items"]]

        assert filtered(mode="monitor") == ["ws-01", "ws-03"]
        assert filtered(policy_version="8") == ["ws-03", "ws-04"]
        assert filtered(mode="enforce", policy_version="7") == ["ws-00", "ws-02"]
        assert filtered(hostname_prefix="ws-0") == [f"ws-{i:02d}" for i in range(5)]
        assert filtered(hostname_prefix="ws-04") == ["ws-04"]
        assert filtered(stale="false") == [f"ws-{i:02d}" for i in range(5)]  # --stale-after 300 s
        assert filtered(stale="true") == []
        # Bad input: one line, 400 or 422, never a 500.
        for params in (
            {"cursor": "not-a-cursor"},
            {"cursor": "ZTE6NQ"},  # an event cursor is not a host cursor
            {"limit": "0"},
            {"limit": "1001"},
            {"policy_version": "-1"},
            {"stale": "maybe"},
            {"hostname_prefix": "ws\x00"},
        ):
            answer = c.get("/hosts", params=params)
            assert answer.status_code in (400, 422), (params, answer.status_code, answer.text)
            assert "\n" not in answer.json()["error"]
