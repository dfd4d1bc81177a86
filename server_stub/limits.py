"""Which rate limits the server keeps, by scope: one definition for the gate, the routes and the exchange.

- principals: per credential holder (role; each host by its node key);
- enrolling hosts: per machine id, at the principals' rate, so a fleet enrolls in parallel instead
  of through one bucket (kept apart, so made-up machine ids never push real principals out);
- addresses: per client address, for requests without a credential and every failed attempt;
- enroll credentials: all enrollments made with one enroll credential (the fleet's secret, or one
  enroll token), whichever host they claim to be: a leaked secret cannot create hosts faster;
- enroll addresses: all enrollments from one client address (half a credential's rate), so one
  source cannot take a whole credential's budget (its refused attempts take nothing from it).

With the defaults (--enroll-rate 3000) a fleet enrolls at up to 1,500 hosts a second from one
address (one NAT, one proxy) and 3,000 from several.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from server_stub.config import ServerConfig
from server_stub.errors import TooManyRequests
from server_stub.ratelimit import RateLimiter

ENROLL_ADDRESS_SHARE = 0.5


@dataclass(frozen=True)
class Limits:
    principals: RateLimiter
    addresses: RateLimiter
    enrolling_hosts: RateLimiter
    enroll_credentials: RateLimiter
    enroll_addresses: RateLimiter

    @classmethod
    def from_config(cls, config: ServerConfig, clock: Callable[[], float] = time.monotonic) -> Limits:
        per_address = config.enroll_rate * ENROLL_ADDRESS_SHARE
        return cls(
            principals=RateLimiter(config.rate_limit, config.rate_burst, clock=clock),
            addresses=RateLimiter(config.rate_limit, config.rate_burst, clock=clock),
            enrolling_hosts=RateLimiter(config.rate_limit, config.rate_burst, clock=clock),
            enroll_credentials=RateLimiter(
                config.enroll_rate, max(1, math.ceil(config.enroll_rate)), clock=clock
            ),
            enroll_addresses=RateLimiter(per_address, max(1, math.ceil(per_address)), clock=clock),
        )

    def by_scope(self) -> dict[str, RateLimiter]:
        """The limiters under the names the shared table knows them by (server_stub/ratesync.py)."""
        return {
            "principal": self.principals,
            "address": self.addresses,
            "enroll-host": self.enrolling_hosts,
            "enroll": self.enroll_credentials,
            "enroll-address": self.enroll_addresses,
        }

    def admit_enrollment(self, credential: str, address: str) -> float:
        """0.0 when an enrollment with this credential from this address may go on (a token taken
        from both); else the seconds to wait, and nothing taken: a source refused by its own
        bucket does not use up the credential's (one address cannot starve the others)."""
        wait = max(self.enroll_credentials.wait(credential), self.enroll_addresses.wait(address))
        if wait > 0:
            return wait
        return self.enroll_credentials.acquire(credential) or self.enroll_addresses.acquire(address)

    def admit_enrolling_host(self, machine_id: str) -> None:
        """One host's own enrollment bucket (the principal limits): 429 when it is dry."""
        wait = self.enrolling_hosts.acquire(machine_id)
        if wait > 0:
            raise TooManyRequests(
                "this machine_id enrolls too often; retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
