"""STATE_DIR/status.json, replaced atomically after each scan; `endpoint-agent status` reads it."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def write_status(path: Path, data: dict[str, object]) -> None:
    """Replace the file atomically: a reader sees the old or the new status, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # status is not secret; `endpoint-agent status` may run unprivileged
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = ["write_status"]
