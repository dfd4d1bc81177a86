"""Process exec/fork/exit events from the kernel's process connector (netlink, stdlib only).

Why: a periodic scan misses short-lived processes and reacts up to one interval late. The
kernel's proc connector (NETLINK_CONNECTOR, CN_IDX_PROC) multicasts an event for every
fork, exec and exit, so the agent can look at a new program right after it execs.

What was found on Linux 6.18 (and matches drivers/connector/cn_proc.c):

* The kernel acknowledges a subscription with a PROC_EVENT_NONE message whose cn_msg.ack is
  ours + 1 and whose `err` says whether it worked (its seq is the kernel's own counter);
  `open_event_source` waits for that ack. Acks are multicast, so ours is a random number.
* Inside a non-initial PID or user namespace the kernel silently ignores the subscription
  (no ack). Events can still arrive when another listener exists, but they carry PIDs of the
  initial PID namespace, meaningless in there; so we refuse early (namespace inode check) and
  treat a missing ack the same way.
* In a non-initial network namespace the subscription send fails with ECONNREFUSED: the
  connector's kernel socket exists only in the initial netns.
* Since Linux 6.6 the kernel also lets unprivileged users listen (uid 65534 got err=0 here);
  older kernels answer EPERM. We still require root: the agent runs as root, only root can
  size the receive buffer past rmem_max (SO_RCVBUFFORCE), and behaviour stays kernel-agnostic.
* When the receive buffer overflows, the next recv fails once with ENOBUFS: events were lost
  and the caller must rescan; that is reported as an `Overrun` marker, and reading goes on.
* The listener count is global in the kernel; `close()` sends PROC_CN_MCAST_IGNORE so the
  kernel stops generating events once nobody listens.

Timestamps are the kernel's CLOCK_MONOTONIC nanoseconds (`time.monotonic_ns()` scale).
Threads produce fork/exit events too (pid != tgid); `ProcEventSource` drops those as it reads
(a threaded program makes most of the traffic, and nothing is done for a thread), and exec
always reports the thread-group leader. A rename (`comm` event) is passed on: a name is what
most rules look at. Reading is batched: every datagram waiting is read into one reused buffer,
and the usual one-message datagram is decoded with a single unpack.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from endpoint_agent.errors import CollectError

logger = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
# Not exported by the socket module; 33 on every architecture Python supports on Linux except
# parisc/sparc (0x100b), where the fallback to SO_RCVBUF takes over.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

PROC_EVENT_NONE = 0x00000000  # the subscription ack
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_EXIT = 0x80000000

# The initial namespaces have fixed inode numbers (include/linux/proc_ns.h).
PROC_USER_INIT_INO = 0xEFFFFFFD
PROC_PID_INIT_INO = 0xEFFFFFFC

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # cb_id.idx, cb_id.val, seq, ack, len, flags
_EVENT_HDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (aligned(8), no padding)
_FORK = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
_EXEC = struct.Struct("=ii")  # process_pid, process_tgid
_EXIT = struct.Struct("=iiII")  # process_pid, process_tgid, exit_code, exit_signal
_EXIT_PARENT = struct.Struct("=ii")  # parent_pid, parent_tgid (Linux >= 6.2; zero before)
_FORK_CHILD = struct.Struct("=ii")  # child_pid, child_tgid (after the parent's two ints)
_COMM = struct.Struct("=ii16s")  # process_pid, process_tgid, comm[16]
# The usual datagram, one message: nlmsghdr, cn_msg, the event header and the first two ints of
# any event (pid, tgid for exec/exit/comm; parent pid, tgid for fork), decoded by one unpack.
_FAST = struct.Struct("=IHHIIIIIIHHIIQii")
_FAST_EVENT_AT = _NLMSGHDR.size + _CN_MSG.size + _EVENT_HDR.size
_ACK = struct.Struct("=I")  # ack.err

_COMM_ENCODING = sys.getfilesystemencoding()
_COMM_ERRORS = sys.getfilesystemencodeerrors()

DEFAULT_RCVBUF = 8 << 20
_RECV_SIZE = 8192  # one datagram is 76 bytes; room for anything odd (it is then rejected)
_MAX_BATCH = 4096  # datagrams per read(), so one read never starves the caller


@dataclass(frozen=True, slots=True)
class ExecEvent:
    pid: int
    tgid: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class ForkEvent:
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int
    timestamp_ns: int

    @property
    def is_thread(self) -> bool:
        return self.child_pid != self.child_tgid


@dataclass(frozen=True, slots=True)
class ExitEvent:
    pid: int
    tgid: int
    timestamp_ns: int
    exit_code: int  # the wait(2) status word: (code << 8) | signal
    exit_signal: int  # signal the parent is sent (SIGCHLD), not the one that killed it
    parent_pid: int | None = None  # None on kernels before 6.2

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tgid


@dataclass(frozen=True, slots=True)
class CommEvent:
    """A process (or thread) renamed itself (prctl PR_SET_NAME, or a write to /proc/<pid>/comm)."""

    pid: int
    tgid: int
    timestamp_ns: int
    comm: str

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tgid


@dataclass(frozen=True, slots=True)
class Overrun:
    """The kernel dropped events (ENOBUFS): whatever was missed needs a full rescan."""

    detected_ns: int


ProcEvent = ExecEvent | ForkEvent | ExitEvent | CommEvent
Event = ProcEvent | Overrun


@dataclass(frozen=True, slots=True)
class _Ack:
    seq: int
    ack: int
    err: int


def parse_datagram(data: bytes) -> list[ProcEvent | _Ack]:
    """Decode one netlink datagram; anything short, odd or foreign is skipped, never raised."""
    out: list[ProcEvent | _Ack] = []
    offset = 0
    while len(data) - offset >= _NLMSGHDR.size:
        nl_len, nl_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if nl_len < _NLMSGHDR.size or nl_len > len(data) - offset:
            break
        if nl_type == NLMSG_DONE:
            item = _parse_cn_msg(data[offset + _NLMSGHDR.size : offset + nl_len])
            if item is not None:
                out.append(item)
        offset += (nl_len + 3) & ~3  # NLMSG_ALIGN
    return out


def _parse_cn_msg(body: bytes) -> ProcEvent | _Ack | None:
    if len(body) < _CN_MSG.size:
        return None
    idx, val, seq, ack, length, _flags = _CN_MSG.unpack_from(body)
    payload = body[_CN_MSG.size : _CN_MSG.size + length]
    if idx != CN_IDX_PROC or val != CN_VAL_PROC or len(payload) != length:
        return None
    if len(payload) < _EVENT_HDR.size:
        return None
    what, _cpu, ts = _EVENT_HDR.unpack_from(payload)
    data = payload[_EVENT_HDR.size :]
    if what == PROC_EVENT_EXEC and len(data) >= _EXEC.size:
        pid, tgid = _EXEC.unpack_from(data)
        return ExecEvent(pid=pid, tgid=tgid, timestamp_ns=ts)
    if what == PROC_EVENT_FORK and len(data) >= _FORK.size:
        ppid, ptgid, cpid, ctgid = _FORK.unpack_from(data)
        return ForkEvent(
            parent_pid=ppid, parent_tgid=ptgid, child_pid=cpid, child_tgid=ctgid, timestamp_ns=ts
        )
    if what == PROC_EVENT_EXIT and len(data) >= _EXIT.size:
        pid, tgid, code, sig = _EXIT.unpack_from(data)
        parent: int | None = None
        if len(data) >= _EXIT.size + _EXIT_PARENT.size:
            parent = _EXIT_PARENT.unpack_from(data, _EXIT.size)[0] or None
        return ExitEvent(
            pid=pid, tgid=tgid, timestamp_ns=ts, exit_code=code, exit_signal=sig, parent_pid=parent
        )
    if what == PROC_EVENT_COMM and len(data) >= _COMM.size:
        pid, tgid, raw = _COMM.unpack_from(data)
        comm = raw.split(b"\0", 1)[0].decode(_COMM_ENCODING, _COMM_ERRORS)
        return CommEvent(pid=pid, tgid=tgid, timestamp_ns=ts, comm=comm)
    if what == PROC_EVENT_NONE and len(data) >= _ACK.size:
        return _Ack(seq=seq, ack=ack, err=_ACK.unpack_from(data)[0])
    return None  # uid/gid/sid/ptrace/coredump events, or a truncated one


def _control_message(op: int, seq: int, ack: int) -> bytes:
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, ack, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, seq, 0) + cn


class ProcEventSource:
    """A subscribed connector socket. Thread-safe: one thread waits, any thread may `close()`.

    `wait(timeout)` blocks (select on the socket and a wake-up eventfd) and returns what
    arrived; `read()` drains without blocking, for callers that select on `fileno()`
    themselves. Iterating yields events until `close()`, which wakes a waiting thread.
    """

    def __init__(self, sock: socket.socket, pending: list[Event] | None = None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._pending: list[Event] = list(pending or [])
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Held while the fds are in use, so close() never closes one under a select or recv. Re-entrant
        # so a signal handler that interrupts wait() in the same thread can still close().
        self._lock = threading.RLock()
        self._state = threading.RLock()  # makes the closed flag and the wake-up one step
        self._closed = False
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[Event]:
        """Everything queued right now (maybe nothing); never blocks."""
        with self._lock:
            if self._closed:
                return []
            return self._drain()

    def wait(self, timeout: float | None = None) -> list[Event]:
        """Block until events arrive, `timeout` passes ([]), or `close()` is called ([])."""
        with self._lock:
            if self._closed:
                return []
            if self._pending:
                return self._drain()
            try:
                ready, _, _ = select.select([self._sock.fileno(), self._wake], [], [], timeout)
            except (OSError, ValueError) as exc:  # closed from a signal handler in this thread
                if self._closed:
                    return []
                raise CollectError(f"process events: wait failed: {exc}") from exc
            if self._closed or not ready:
                return []
            return self._drain()

    def __iter__(self) -> Iterator[Event]:
        while not self._closed:
            yield from self.wait(None)

    def close(self) -> None:
        """Unsubscribe and close; wakes a thread blocked in `wait()` (which then returns [])."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            os.eventfd_write(self._wake, 1)
        with self._lock:
            try:
                self._sock.send(_control_message(PROC_CN_MCAST_IGNORE, 0, 0))
            except OSError as exc:
                logger.debug("process events: unsubscribe failed: %s", exc)
            self._sock.close()
            os.close(self._wake)

    def __enter__(self) -> ProcEventSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _drain(self) -> list[Event]:
        # Into one reused buffer; the common single-message datagram is decoded by one unpack and
        # thread forks/exits (most of the traffic of a threaded program) are dropped here, unbuilt.
        out, self._pending = self._pending, []
        buf, view = self._buf, self._view
        for _ in range(_MAX_BATCH):
            try:
                size, addr = self._sock.recvfrom_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    if not out or not isinstance(out[-1], Overrun):
                        out.append(Overrun(detected_ns=time.monotonic_ns()))
                    continue
                if self._closed:
                    break
                raise CollectError(f"process events: receive failed: {exc.strerror or exc}") from exc
            if not _from_kernel(addr):
                continue
            quick = _decode_common(buf, size)
            if quick is None:
                out.extend(item for item in parse_datagram(bytes(view[:size])) if not isinstance(item, _Ack))
            elif quick is not False:
                out.append(quick)
        return out


def _decode_common(buf: bytearray, size: int) -> ExecEvent | ForkEvent | Literal[False] | None:
    """The usual one-message datagram in one unpack: an exec, or a fork of a process.

    False: a thread's fork or exit (dropped unbuilt); None: anything else (parse_datagram's job).
    """
    if size < _FAST.size:
        return None
    nl_len, nl_type, _f, _s, _p, idx, val, _seq, _ack, length, _fl, what, _cpu, ts, a, b = _FAST.unpack_from(
        buf
    )
    if nl_len != size or nl_type != NLMSG_DONE or idx != CN_IDX_PROC or val != CN_VAL_PROC:
        return None
    if not _EVENT_HDR.size + _EXEC.size <= length <= size - _NLMSGHDR.size - _CN_MSG.size:
        return None
    if what == PROC_EVENT_EXEC:
        return ExecEvent(pid=a, tgid=b, timestamp_ns=ts)
    if what == PROC_EVENT_EXIT:
        return False if a != b else None
    if what == PROC_EVENT_FORK and length >= _EVENT_HDR.size + _FORK.size:
        child_pid, child_tgid = _FORK_CHILD.unpack_from(buf, _FAST_EVENT_AT + 8)
        if child_pid != child_tgid:
            return False
        return ForkEvent(a, b, child_pid, child_tgid, ts)
    return None


def _from_kernel(addr: object) -> bool:
    # The sender's port id is filled in by the kernel (not the spoofable nlmsg_pid): 0 is the kernel.
    return isinstance(addr, tuple) and len(addr) >= 1 and addr[0] == 0


def _ns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/proc/self/ns/{name}").st_ino
    except OSError:
        return None


def open_event_source(
    *, rcvbuf: int = DEFAULT_RCVBUF, ack_timeout: float = 1.0, essential: bool = False
) -> ProcEventSource | None:
    """Subscribe to process events; None (with the reason logged) where they are unavailable.

    `essential`: the kernel itself drops every event but execs, and exits and renames of whole
    processes (`essential_filter`), so forks and threads never wake the reader.
    """
    reason = _unavailable_reason()
    if reason is not None:
        logger.warning("process events unavailable: %s", reason)
        return None
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    except OSError as exc:
        logger.warning("process events unavailable: no netlink connector in this kernel (%s)", exc)
        return None
    try:
        if essential:
            _attach_filter(sock, essential_filter())
        source = _subscribe(sock, rcvbuf, ack_timeout)
    except OSError as exc:
        logger.warning("process events unavailable: %s", _describe(exc))
        source = None
    if source is None:
        sock.close()
    return source


# Classic BPF on the netlink datagram (it starts at the nlmsghdr): loads are big-endian words.
_BPF_LD_ABS, _BPF_ST, _BPF_LDX_MEM, _BPF_JEQ_K, _BPF_JEQ_X, _BPF_RET_K = 0x20, 0x02, 0x61, 0x15, 0x1D, 0x06
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_WHAT_AT = _NLMSGHDR.size + _CN_MSG.size  # proc_event.what
_PID_AT = _FAST_EVENT_AT  # exec/exit/comm: process_pid, then process_tgid
_ACCEPT = 0xFFFF  # bytes kept of an accepted datagram (all of it)


def _word(value: int) -> int:
    """A host-order u32 field as a BPF absolute load sees it (network order)."""
    return int.from_bytes(struct.pack("=I", value), "big")


def essential_filter() -> bytes:
    """The program of `open_event_source(essential=True)`, as struct sock_filter entries."""
    program = [
        (_BPF_LD_ABS, 0, 0, _WHAT_AT),
        (_BPF_JEQ_K, 10, 0, _word(PROC_EVENT_EXEC)),  # -> accept
        (_BPF_JEQ_K, 9, 0, _word(PROC_EVENT_NONE)),  # the subscription ack -> accept
        (_BPF_JEQ_K, 2, 0, _word(PROC_EVENT_COMM)),  # -> whole process?
        (_BPF_JEQ_K, 1, 0, _word(PROC_EVENT_EXIT)),  # -> whole process?
        (_BPF_RET_K, 0, 0, 0),  # forks, uid/gid/sid/ptrace/coredump changes: dropped
        (_BPF_LD_ABS, 0, 0, _PID_AT + 4),  # tgid
        (_BPF_ST, 0, 0, 0),
        (_BPF_LDX_MEM, 0, 0, 0),
        (_BPF_LD_ABS, 0, 0, _PID_AT),  # pid
        (_BPF_JEQ_X, 1, 0, 0),  # pid == tgid -> accept
        (_BPF_RET_K, 0, 0, 0),  # a thread: dropped
        (_BPF_RET_K, 0, 0, _ACCEPT),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    import ctypes

    code = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(code))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def _unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    if os.geteuid() != 0:
        return "not running as root"
    if _ns_inode("pid") not in (None, PROC_PID_INIT_INO):
        return "inside a PID namespace (the kernel ignores subscriptions from there)"
    if _ns_inode("user") not in (None, PROC_USER_INIT_INO):
        return "inside a user namespace (the kernel ignores subscriptions from there)"
    return None


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "inside a network namespace (the connector lives in the initial one only)"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return f"permission denied by the kernel ({exc.strerror})"
    return f"netlink error: {exc.strerror or exc}"


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # capped at net.core.rmem_max


def _subscribe(sock: socket.socket, rcvbuf: int, ack_timeout: float) -> ProcEventSource | None:
    _set_rcvbuf(sock, rcvbuf)
    sock.bind((0, CN_IDX_PROC))
    seq, ack = 1, random.randrange(1, 1 << 30)
    sock.send(_control_message(PROC_CN_MCAST_LISTEN, seq, ack))
    sock.setblocking(False)
    pending: list[Event] = []  # other listeners' events may reach us before our ack
    deadline = time.monotonic() + ack_timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            data, addr = sock.recvfrom(_RECV_SIZE)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            pending.append(Overrun(detected_ns=time.monotonic_ns()))
            continue
        if not _from_kernel(addr):
            continue
        for item in parse_datagram(data):
            if not isinstance(item, _Ack):
                pending.append(item)
            elif item.ack == ack + 1:  # the kernel echoes ack + 1; its seq is its own counter
                if item.err:
                    logger.warning("process events unavailable: kernel refused: %s", os.strerror(item.err))
                    return None
                return ProcEventSource(sock, pending)
    logger.warning(
        "process events unavailable: no subscription ack from the kernel within %.1fs", ack_timeout
    )
    return None
