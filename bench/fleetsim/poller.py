"""Keep-alive polling in callbacks: the closed loops of the poll and overload steps, where the
simulator's cost per request must stay far below the server's (a 304 costs it ~150 us).

    await keep_polling(loop, port, requests, rec, until=t_end, timeout=5.0)   # reconnects when lost

One connection sends pre-encoded polls (`requests`, in turn), one at a time: the next as soon as
the answer is in (or after a pause: `think`, a mean in seconds, exponential). No coroutine, task
or future per request; each answer's status and latency go to `rec` under "policy". A request
without an answer after `timeout` is a timeout and ends the connection; so does a connection the
server closes (with its request counted as an error); one whose answer says Connection: close is
closed here, as an agent's client does. `wait_retry_after`: a 429/503 carrying
Retry-After pauses this connection that long, as an agent would.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from typing import Any

from bench.fleetsim.http import Connection, Timeout, _parse
from bench.fleetsim.stats import ERROR, TIMEOUT, Recorder

KIND = "policy"


class Poller(asyncio.Protocol):
    def __init__(
        self, requests: list[bytes], rec: Recorder, *, until: float, timeout: float,
        done: asyncio.Future[None], first: int = 0, think: float = 0.0, wait_retry_after: bool = False,
        rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self.requests = requests
        self.rec = rec
        self.until = until  # time.monotonic() after which no request is sent
        self.timeout = timeout
        self.done = done
        self.i = first
        self.think = think
        self.wait_retry_after = wait_retry_after
        self.rng = rng or random.Random()
        self.transport: Any = None
        self.buf = bytearray()
        self.sent_at = 0.0  # 0: no request in flight
        self.timer: asyncio.TimerHandle | None = None
        self.resume_at = 0.0  # time.monotonic() before which this connection sends nothing more
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if time.monotonic() >= self.until:
            self.transport.close()
            return
        raw = self.requests[self.i % len(self.requests)]
        self.i += 1
        self.sent_at = time.perf_counter()
        self.timer = self.loop.call_later(self.timeout, self._expired)
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        answer = _parse(self.buf)
        if answer is None or not self.sent_at:
            return
        now = time.perf_counter()
        self.rec.add(KIND, answer.status, now - self.sent_at)
        self.sent_at = 0.0
        if self.timer is not None:
            self.timer.cancel()
        pause = self.rng.expovariate(1.0 / self.think) if self.think > 0 else 0.0
        if answer.status in (429, 503):
            after = answer.header(b"retry-after")
            if after is not None:
                self.rec.retry_after_seen += 1
                if self.wait_retry_after and after.isdigit():
                    pause = max(pause, float(after))
        if pause > 0:
            self.resume_at = time.monotonic() + pause
        if b"\r\nconnection: close" in answer.headers:
            # Not reused, as an agent's client does: a request sent before the server's close
            # arrives would be lost with it. keep_polling opens another after the pause.
            self.transport.close()
        elif pause > 0:
            self.loop.call_later(pause, self._send)
        else:
            self._send()

    def _expired(self) -> None:
        if self.sent_at:
            self.rec.add(KIND, TIMEOUT, time.perf_counter() - self.sent_at)
            self.sent_at = 0.0
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.sent_at:  # closed under a request
            self.rec.add(KIND, ERROR, time.perf_counter() - self.sent_at)
            self.sent_at = 0.0
        if not self.done.done():
            self.done.set_result(None)


def _same(poller: Poller) -> Poller:
    return poller


async def keep_polling(
    loop: asyncio.AbstractEventLoop, port: int, requests: list[bytes], rec: Recorder, *, until: float,
    timeout: float, first: int = 0, think: float = 0.0, wait_retry_after: bool = False,
    rng: random.Random | None = None,
) -> None:  # fmt: skip
    """One connection polling until `until` (time.monotonic()); a new one whenever it is lost
    (after the pause its last answer asked for). A failed connect counts as an error."""
    rng = rng or random.Random()
    while (now := time.monotonic()) < until:
        done: asyncio.Future[None] = loop.create_future()
        poller = Poller(
            requests, rec, until=until, timeout=timeout, done=done, first=first, think=think,
            wait_retry_after=wait_retry_after, rng=rng,
        )  # fmt: skip
        try:
            conn = await Connection.open(
                loop, "127.0.0.1", port, timeout=timeout, protocol=functools.partial(_same, poller)
            )
        except (OSError, Timeout):
            rec.add(KIND, ERROR, time.monotonic() - now)
            await asyncio.sleep(0.05)  # not a busy loop against a closed port
            continue
        try:
            await done
        finally:
            conn.close()
        first = poller.i
        if poller.resume_at > time.monotonic():
            await asyncio.sleep(min(poller.resume_at, until) - time.monotonic())


__all__ = ["Poller", "keep_polling"]
