"""Two server processes on one PostgreSQL behind Debian's haproxy, and the real agent pointed at the
proxy: one server is killed with SIGKILL, the agent keeps syncing and uploading, every violation is
stored exactly once, and the restarted server serves everything the other one took meanwhile.

KILL SAFETY: the agent and its stand-ins run in a private PID namespace (tests/support/e2e_harness.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci_skip import require
from tests.support.e2e_harness import Agent, Server, wait_for
from tests.support.enforce_procs import PidNamespace, is_dead, pid_namespaces_available
from tests.support.haproxy import Haproxy, haproxy_missing
from tests.support.server import fresh_pg_database, pg_url_or_skip
from tests.support.service_rig import policy_yaml, unique

pytestmark = [pytest.mark.root, pytest.mark.postgres]


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Server, Server, Haproxy]]:
    require(pid_namespaces_available())
    require(haproxy_missing())
    with fresh_pg_database(pg_url_or_skip()) as url:
        trust = ["--trusted-proxy", "127.0.0.1"]
        a = Server(tmp_path / "a", db_url=url, extra_args=trust)
        b = Server(tmp_path / "b", db_url=url, extra_args=trust, replica_of=a)
        try:
            a.start()
            b.start()
            with Haproxy(tmp_path / "proxy", [a.url, b.url]) as proxy:
                yield a, b, proxy
        finally:
            a.stop()
            b.stop()


def violation_ids(server: Server) -> list[str]:
    return [v["event_id"] for v in server.items("/violations")]


def test_the_agent_fails_over_when_a_server_is_killed(
    replicas: tuple[Server, Server, Haproxy], tmp_path: Path
) -> None:
    a, b, proxy = replicas
    prefix = unique("e2e-p2p")
    a.publish(policy_yaml([("p2p-standin", "block", f"{prefix}-*")]))
    with PidNamespace() as ns:
        agent = Agent(ns, tmp_path / "agent", a, url=proxy.url)
        agent.start()
        log = agent.log_text
        wait_for("the agent to run policy 1 through the proxy", lambda: agent.running_policy(1), context=log)
        first = agent.standin(f"{prefix}-0")
        wait_for("the first violation on the servers", lambda: len(violation_ids(b)) == 1, context=log)

        a.kill()  # SIGKILL: no shutdown
        victims = [agent.standin(f"{prefix}-{i}") for i in range(1, 4)]
        wait_for("the stand-ins to be stopped", lambda: all(is_dead(v.pid) for v in victims), context=log)
        wait_for("the violations to reach the survivor", lambda: len(violation_ids(b)) == 4, context=log)
        b.publish(policy_yaml([("p2p-standin", "block", f"{prefix}-*")], version=2))
        wait_for("the agent to sync policy 2 from the survivor", lambda: agent.running_policy(2), context=log)

        a.start()  # the restarted server serves what the other one took meanwhile
        assert sorted(violation_ids(a)) == sorted(violation_ids(b))
        b.kill()
        last = agent.standin(f"{prefix}-4")
        wait_for(
            "the last violation through the restarted server", lambda: len(violation_ids(a)) == 5, context=log
        )
        a.publish(policy_yaml([("p2p-standin", "block", f"{prefix}-*")], version=3))
        wait_for("the agent to sync policy 3", lambda: agent.running_policy(3), context=log)

        assert is_dead(first.pid) and is_dead(last.pid)
        local = [e.event_id for e in agent.events("violation")]
        stored = violation_ids(a)
        assert Counter(stored).most_common(1)[0][1] == 1, "a violation stored twice"
        assert sorted(stored) == sorted(local) and len(local) == 5
        wait_for(
            "the agent to mark every violation uploaded",
            lambda: all(e.uploaded_at for e in agent.events("violation")),
            context=log,
        )
        hosts = a.hosts()
        assert len(hosts) == 1, hosts  # one enrollment, whichever server answered it
