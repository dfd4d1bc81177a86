"""The default enrollment limits (server_stub/limits.py), on a simulated clock: a fleet enrolling
from one address at 1,000 a second is never refused, while each bucket still bounds what it
guards -- one address, one credential, one machine id."""

from __future__ import annotations

import gc
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server_stub.config import ServerConfig
from server_stub.limits import Limits

SECRET = "fleet-secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def default_limits(clock: Clock) -> Limits:
    config = ServerConfig(
        data_dir=Path("/nonexistent"),
        public_keys=(Ed25519PrivateKey.generate().public_key(),),
        admin_token="adm-" + "a" * 24,
        enroll_secret="enr-" + "e" * 24,
    )
    return Limits.from_config(config, clock=clock)


def admitted(limits: Limits, address: str, machine_id: str) -> bool:
    """What the gate and the route decide for one enrollment (server_stub/middleware.py, enrollserve.py)."""
    if limits.admit_enrollment(SECRET, address) > 0:
        return False
    return limits.enrolling_hosts.acquire(machine_id) == 0


def test_one_address_enrolls_a_fleet_at_1000_a_second_unrefused() -> None:
    clock = Clock()
    limits = default_limits(clock)
    for n in range(20_000):  # 20 s at 1,000 a second, every one a new machine
        clock.now = 1000.0 + n / 1000
        assert admitted(limits, "addr:10.0.0.1", f"m{n}"), n


def test_one_flooding_address_is_held_to_its_share_and_leaves_the_rest_to_others() -> None:
    clock = Clock()
    limits = default_limits(clock)
    flood = quiet = 0
    for n in range(40_000):  # 10 s: one address trying 4,000 a second, another 1,000 a second
        clock.now = 1000.0 + n / 4000
        flood += admitted(limits, "addr:10.0.0.66", f"f{n}")
        if n % 4 == 0:
            quiet += admitted(limits, "addr:10.0.0.2", f"q{n}")
    assert 15_000 <= flood <= 15_000 + 1_500 + 1  # 1,500 a second and one burst
    assert quiet == 10_000  # its refused attempts took nothing from the credential's budget


def test_the_credential_is_bounded_across_addresses() -> None:
    clock = Clock()
    limits = default_limits(clock)
    total = 0
    for n in range(100_000):  # 10 s: 10 addresses, 10,000 a second together
        clock.now = 1000.0 + n / 10_000
        total += admitted(limits, f"addr:10.0.1.{n % 10}", f"m{n}")
    assert 30_000 <= total <= 30_000 + 3_000 + 1  # 3,000 a second and one burst


def test_one_machine_id_enrolling_in_a_loop_is_refused_alone() -> None:
    clock = Clock()
    limits = default_limits(clock)
    looping = sum(admitted(limits, "addr:10.0.0.1", "same") for _ in range(500))
    assert looping == 100  # the ordinary burst, then its own 20 a second
    assert admitted(limits, "addr:10.0.0.1", "another")


def test_a_fleet_of_buckets_is_not_left_for_the_collector_to_walk() -> None:
    """Each enrolling machine gets a bucket: 10,000 of them are kept, and a full collection must
    not walk them all (server_stub/ratelimit.py keeps them as plain tuples of numbers)."""
    limits = default_limits(Clock())
    for n in range(2000):
        limits.admit_enrolling_host(f"machine-{n}")
    gc.collect()
    buckets = list(limits.enrolling_hosts._buckets.values())
    assert len(buckets) == 2000 and not any(gc.is_tracked(bucket) for bucket in buckets)
