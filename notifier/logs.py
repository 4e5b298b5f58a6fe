"""Structured JSON logs on stderr; addresses are masked and tokens never logged."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")
TOKEN_PATH = re.compile(r"(/v1/(?:confirm|unsubscribe|manage)/)[^\s/?\"']+")


def mask(text: str) -> str:
    """j***@example.org, and /v1/confirm/*** instead of a token."""
    text = EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return TOKEN_PATH.sub(lambda m: f"{m.group(1)}***", text)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask(record.getMessage()),
        }
        for key in ("request_id", "event_id", "job"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "arq.worker"):  # per-job lines at INFO would drown the rest
        logging.getLogger(noisy).setLevel(logging.WARNING)
