"""The break-glass file: while it exists, the agent signals nothing.

An administrator who sees enforcement going wrong on a machine runs, as root,
`touch /etc/endpoint-agent/break-glass` (the path is the `break_glass_file` setting); the next
scan is in monitor mode, whatever the policy says, until the file is removed.

Only a file an unprivileged user could not have made counts, or any user could switch
enforcement off: on POSIX it must be a regular file (not a symlink to some root-owned file),
owned by root -- or by the agent's own user when the agent does not run as root -- not
writable by others, and not a hard link. A file that fails these checks is ignored, loudly.
On Windows the file's presence is enough; keep it in a directory only administrators may write.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BreakGlassState:
    active: bool
    path: Path
    note: str  # why active or why ignored; "" when absent

    def to_json(self) -> dict[str, object]:
        return {"active": self.active, "path": str(self.path), "note": self.note}


class BreakGlass:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._last: BreakGlassState | None = None

    @property
    def path(self) -> Path:
        return self._path

    def check(self) -> BreakGlassState:
        state = self._evaluate()
        if self._last is None or state != self._last:
            if state.active:
                logger.warning("break-glass file %s present: monitor mode forced", self._path)
            elif state.note:
                logger.warning("break-glass file %s ignored: %s", self._path, state.note)
            elif self._last is not None and self._last.active:
                logger.warning("break-glass file %s removed: policy mode applies again", self._path)
        self._last = state
        return state

    def _evaluate(self) -> BreakGlassState:
        try:
            st = os.lstat(self._path)
        except FileNotFoundError:
            return BreakGlassState(False, self._path, "")
        except OSError as exc:
            return BreakGlassState(False, self._path, f"cannot examine it: {exc.strerror or exc}")
        if sys.platform == "win32":
            return BreakGlassState(True, self._path, "present")
        if not stat.S_ISREG(st.st_mode):
            return BreakGlassState(False, self._path, "not a regular file (symlinks do not count)")
        allowed_owners = {0, os.geteuid()}
        if st.st_uid not in allowed_owners:
            return BreakGlassState(False, self._path, f"owned by uid {st.st_uid}, not root")
        if st.st_mode & stat.S_IWOTH:
            return BreakGlassState(False, self._path, "world-writable")
        if st.st_nlink != 1:
            return BreakGlassState(False, self._path, "hard-linked")
        return BreakGlassState(True, self._path, "present")


__all__ = ["BreakGlass", "BreakGlassState"]
