"""The gate's decision table: verdicts from memory, in the gate process (no fanotify here).

`decide(key, pid, st)` answers one exec from what is known: the verdict cached for the file
version `key` (dev, ino, size, mtime_ns, ctime_ns) or for (file version, uid) when the policy
looks at the user. When a fact is missing it returns a `Wait` naming the job that would supply
it (`FileJob` or `UserJob`); the caller runs the job off the decision path and asks again, or
allows the exec when its deadline passes.

On top of the exec-time policy (policy/exec_time.py), every safety rail of the post-exec path:
protected programs are never denied (enforce/guard.py `check_program`, plus the agent's own
interpreter); outside enforce mode (policy mode, break-glass, circuit breaker, an unsafe policy,
the dry run below) a deny becomes an allow with a `would_block` report.

The dry run (`assess`) judges the programs installed in the system's bin directories as an
interactive user would run them; a policy whose exec-time rules would deny a protected program,
or more than `unsafe_share` of them, is held to monitor mode.
"""

from __future__ import annotations

import os
import stat
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from endpoint_agent.enforce.guard import Guard
from endpoint_agent.gate.facts import FactsReader, FileFacts
from endpoint_agent.policy.exec_time import ExecFile, ExecTimePolicy, ExecUser, Judgement, Verdict
from endpoint_agent.types import Finding

FileKey = tuple[int, int, int, int, int]
MAX_ENTRIES = 16384
_TIMINGS = 4096
BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True, slots=True)
class Answer:
    allow: bool
    ignorable: bool = False  # the kernel may allow this file from now on without asking
    outcome: str | None = None  # "denied" | "would_block" when the exec is worth a report
    finding: Finding | None = None
    protected: bool = False


@dataclass(frozen=True, slots=True)
class FileJob:
    key: FileKey


@dataclass(frozen=True, slots=True)
class UserJob:
    uid: int


Wait = FileJob | UserJob
ALLOW = Answer(True)
ALLOW_IGNORABLE = Answer(True, ignorable=True)


@dataclass
class GateStats:
    decisions: int = 0
    allowed: int = 0
    denied: int = 0
    would_block: int = 0
    protected: int = 0
    exempt: int = 0  # the agent's and the gate's own execs
    cache_hits: int = 0
    cache_misses: int = 0
    deadline_misses: int = 0
    late_judgements: int = 0  # facts that arrived after their exec was allowed
    errors: int = 0
    reports_sent: int = 0
    reports_suppressed: int = 0  # within the per-(rule, file, user) interval
    reports_dropped: int = 0  # the agent's socket was full
    mounts_marked: int = 0
    ignore_marks: int = 0
    _timings: array = field(default_factory=lambda: array("q", [0] * _TIMINGS))
    _timed: int = 0
    _longest: int = 0

    def time(self, nanoseconds: int, *, cached: bool = True) -> None:
        """How long an exec was held; p50/p99 are of the execs answered from the table at once."""
        if cached:
            self._timings[self._timed % _TIMINGS] = nanoseconds
            self._timed += 1
        self._longest = max(self._longest, nanoseconds)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        samples = sorted(self._timings[: min(self._timed, _TIMINGS)])
        looked = self.cache_hits + self.cache_misses
        out["cache_hit_rate"] = round(self.cache_hits / looked, 4) if looked else None
        out["p50_ms"] = round(samples[len(samples) // 2] / 1e6, 3) if samples else None
        out["p99_ms"] = (
            round(samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1e6, 3) if samples else None
        )
        out["max_ms"] = round(self._longest / 1e6, 3)  # the longest any exec was held
        return out


def read_uid(pid: int, proc: str = "/proc") -> int | None:
    """The real uid of `pid` (None when it vanished)."""
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Table:
    def __init__(
        self,
        policy: ExecTimePolicy,
        guard: Guard,
        *,
        enforce: bool,
        protected_files: Iterable[tuple[int, int]] = (),
        ignore_marks: bool = True,
        uid_of: Callable[[int], int | None] = read_uid,
    ) -> None:
        self.policy = policy
        self._guard = guard
        self._protected_files = frozenset(protected_files)
        self._ignore_marks = ignore_marks
        self._uid_of = uid_of
        self.stats = GateStats()
        self._files: dict[FileKey, FileFacts] = {}
        self._verdicts: dict[FileKey, Answer] = {}
        self._user_verdicts: dict[tuple[FileKey, int], Answer] = {}
        self._users: dict[int, ExecUser] = {}
        self._enforce_wanted = enforce
        self.mode_reason = ""
        self.safe: bool | None = None  # the dry run's verdict; None until it ran
        self.unsafe_reason = ""

    # -- mode ------------------------------------------------------------------------------------

    @property
    def enforcing(self) -> bool:
        return self._enforce_wanted and self.safe is True

    def set_mode(self, enforce: bool, reason: str) -> None:
        self._enforce_wanted = enforce
        self.mode_reason = reason
        self._forget_verdicts()

    def set_safety(self, safe: bool, reason: str) -> None:
        self.safe = safe
        self.unsafe_reason = "" if safe else reason
        self._forget_verdicts()

    def _forget_verdicts(self) -> None:
        self._verdicts.clear()
        self._user_verdicts.clear()

    # -- facts from the judge thread --------------------------------------------------------------

    def add_file(self, key: FileKey, facts: FileFacts) -> None:
        if len(self._files) >= MAX_ENTRIES:
            self._files.clear()
            self._forget_verdicts()
        self._files[key] = facts

    def add_user(self, user: ExecUser) -> None:
        if len(self._users) >= MAX_ENTRIES:
            self._users.clear()
        self._users[user.uid] = user

    def has_file(self, key: FileKey) -> bool:
        return key in self._files

    # -- the decision ------------------------------------------------------------------------------

    def decide(self, key: FileKey, pid: int, st: os.stat_result) -> Answer | Wait:
        answer = self._verdicts.get(key)
        if answer is not None:
            self.stats.cache_hits += 1
            return answer
        facts = self._files.get(key)
        if facts is None:
            return FileJob(key)
        if facts.file is None:
            answer = ALLOW_IGNORABLE if facts.system_file and self._ignore_marks else ALLOW
            self._remember(key, answer)
            return answer
        judgement = self.policy.judge(facts.file)
        if judgement.verdict is not Verdict.NEED_USER:
            answer = self._final(judgement, facts, st, None)
            self._remember(key, answer)
            return answer
        uid = self._uid_of(pid)
        if uid is None:
            self.stats.errors += 1
            return ALLOW  # the process is gone: nothing runs
        answer = self._user_verdicts.get((key, uid))
        if answer is not None:
            self.stats.cache_hits += 1
            return answer
        user = self._users.get(uid)
        if user is None:
            return UserJob(uid)
        answer = self._final(self.policy.judge(facts.file, user), facts, st, uid)
        if len(self._user_verdicts) >= MAX_ENTRIES:
            self._user_verdicts.clear()
        self._user_verdicts[(key, uid)] = answer
        self.stats.cache_misses += 1
        return answer

    def _remember(self, key: FileKey, answer: Answer) -> None:
        if len(self._verdicts) >= MAX_ENTRIES:
            self._verdicts.clear()
        self._verdicts[key] = answer
        self.stats.cache_misses += 1

    def _final(self, judgement: Judgement, facts: FileFacts, st: os.stat_result, uid: int | None) -> Answer:
        if judgement.verdict is Verdict.ALLOW:
            ignorable = facts.system_file and self._ignore_marks and not judgement.depends_on_user
            return ALLOW_IGNORABLE if ignorable else ALLOW
        assert facts.file is not None and judgement.finding is not None
        if (st.st_dev, st.st_ino) in self._protected_files or self._guard.check_program(
            facts.file.path, st, uid=uid
        ):
            return Answer(True, protected=True)
        if not self.enforcing:
            return Answer(True, outcome="would_block", finding=judgement.finding)
        return Answer(False, outcome="denied", finding=judgement.finding)


# -- the dry run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRunResult:
    safe: bool
    reason: str
    programs: int = 0
    denied: int = 0


def installed_programs(dirs: Iterable[str] = BIN_DIRS) -> list[str]:
    seen: set[tuple[int, int]] = set()
    out = []
    for directory in dirs:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111 or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            out.append(entry.path)
    return out


def assess(
    policy: ExecTimePolicy,
    reader: FactsReader,
    guard: Guard,
    *,
    max_share: float,
    programs: Iterable[str] | None = None,
    min_uid: int | None = None,
) -> DryRunResult:
    """Judge the installed programs as an interactive user would run them (sha256 rules aside:
    only protected programs are hashed, to keep this quick)."""
    if not policy.can_deny:
        return DryRunResult(True, "its exec-time rules deny nothing")
    uid = min_uid if min_uid is not None else policy.policy.unapproved.min_uid
    user = ExecUser(uid, None)
    paths = list(programs) if programs is not None else installed_programs()
    denied = 0
    protected: list[str] = []
    judged = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            facts = reader.read(fd)
        finally:
            os.close(fd)
        if facts.file is None:
            continue
        judged += 1
        file = facts.file
        if not guard.names_program(file.path):
            file = ExecFile(file.path, None, file.package)  # hashing every program would take long
        judgement = policy.judge(file, user)
        if judgement.verdict is not Verdict.DENY:
            continue
        denied += 1
        if guard.check_program(file.path, st, uid=None) is not None:
            protected.append(f"{file.path} (rule {judgement.rule_id})")
    if protected:
        return DryRunResult(
            False, f"its exec-time rules deny protected programs, e.g. {sorted(protected)[0]}", judged, denied
        )
    if judged and denied > max_share * judged:
        reason = (
            f"its exec-time rules deny {denied} of {judged} installed programs, more than the allowed share "
            f"of {max_share:.0%}"
        )
        return DryRunResult(False, reason, judged, denied)
    return DryRunResult(
        True, f"its exec-time rules deny {denied} of {judged} installed programs", judged, denied
    )


def now_ns() -> int:
    return time.perf_counter_ns()


__all__ = [
    "ALLOW",
    "Answer",
    "DryRunResult",
    "FileJob",
    "FileKey",
    "GateStats",
    "Table",
    "UserJob",
    "Wait",
    "assess",
    "installed_programs",
    "read_uid",
]
