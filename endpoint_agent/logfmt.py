"""JSON log lines with fields, for the agent and the server alike.

    logger.info("violation ...", extra=log_fields(rule_id="p2p-x", pid=4242))
    set_log_context(host_id="h-1")      # once known; added to every later line

Text lines (`TextLineFormatter`) show the message through `display.printable`: a process name
with a newline cannot forge a line, and traceback lines are marked `| `. JSON lines are safe as
JSON (every control character escaped).

Each JSON line: time, level, logger, message, then the fields a log pipeline filters on (`rule_id`,
`pid`, `host_id`, `event_id`, ...) as top-level keys, and the traceback as `exception`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from endpoint_agent.display import printable
from endpoint_contract.timestamps import iso_utc

# Fields a log line may carry as top-level keys (passed with `extra=`), in this order.
FIELDS = ("host_id", "rule_id", "pid", "event_id", "action", "process_name", "method", "path", "status")

_context: dict[str, object] = {}


def set_log_context(**fields: object) -> None:
    """Fields added to every later line of this process (e.g. the host_id once enrolled)."""
    _context.update({k: v for k, v in fields.items() if k in FIELDS})


def log_fields(**fields: object) -> dict[str, object]:
    """`extra=` for a log call; only known fields (so a typo cannot clobber a LogRecord attribute)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields: {sorted(unknown)}")
    return {f"field_{k}": v for k, v in fields.items()}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, fields (+ exception with its traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": iso_utc(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, f"field_{name}", _context.get(name))
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextLineFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line per record whatever the message holds."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        flat = logging.makeLogRecord(record.__dict__)
        flat.msg, flat.args = printable(record.getMessage()), None
        flat.exc_info, flat.exc_text, flat.stack_info = None, None, None
        line = super().format(flat)
        if record.exc_info:
            # Each line of the traceback marked and escaped: its text may quote what a user chose.
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n| {printable(t)}" for t in trace)
        return line
