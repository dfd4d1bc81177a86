"""JSON lines appended to a private file, rotated by size (the agent event log, the server file export)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path


class RotatingJsonLines:
    """JSON lines appended to a 0600 file, rotated by size: path, path.1 ... path.N (oldest dropped)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, 0o600)
            os.fchmod(self._fd, 0o600)  # an existing file keeps no wider mode
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _rotate(self) -> None:
        self.close()
        self._size = 0
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def write(self, lines: Sequence[str]) -> None:
        """Append the lines (each one JSON document), rotating before a write that would overflow."""
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", "backslashreplace") + b"\n"
            if self._size + size + len(data) > self.max_bytes and (self._size or size):
                self._flush(b"".join(chunk))
                chunk, size = [], 0
                self._rotate()
            chunk.append(data)
            size += len(data)
        self._flush(b"".join(chunk))

    def _flush(self, buf: bytes) -> None:
        if not buf:
            return
        fd = self._open()
        view = memoryview(buf)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        self._size += len(buf)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


__all__ = ["RotatingJsonLines"]
