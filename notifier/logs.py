"""Structured JSON logs on stderr with the request id; addresses, tokens and secrets masked."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from notifier.settings import Settings

# The id of the request being served; set by the web's request-id middleware for its duration.
REQUEST_ID: ContextVar[str | None] = ContextVar("notifier_request_id", default=None)

# Any local part (internationalised addresses too, e.g. josé@…): everything up to the "@" that is
# not a space, quote, bracket or separator; the domain is kept for debugging.
_LOCAL = r"[^\s<>()\[\]{}\"'`,;:@\u2039\u203a\u00ab\u00bb]"
EMAIL = re.compile(rf"({_LOCAL}){_LOCAL}*@([\w.-]+)")
TOKEN_PATH = re.compile(
    r"(/v1/(?:confirm|unsubscribe|manage|resubscribe)/)(?!\{token\})[^\s/?\"'<>]+"
)
# itsdangerous tokens (payload.timestamp.signature, URL-safe base64) wherever they appear: by
# their payload, base64 JSON ("eyJ…") or compressed "." + base64 zlib ("eJ…"), or by the shape
# of their tail (a 6-character timestamp and a 27-character HMAC-SHA1), so that the tail of a
# token cut by a line break (quoted-printable mail bodies) is caught as well.
_B64 = "[A-Za-z0-9_-]"
SIGNED_TOKEN = re.compile(
    rf"\.?e(?:yJ|J){_B64}*\.{_B64}{{4,8}}\.{_B64}{{20,}}|{_B64}+\.{_B64}{{6}}\.{_B64}{{27}}(?!{_B64})"
)
SECRET_MIN = 8  # shorter "secrets" (dev placeholders) would mask ordinary words
MASKED = "***"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """j***@example.org, /v1/confirm/*** for token paths, *** for signed tokens and secrets."""
    for secret in secrets:
        text = text.replace(secret, MASKED)
    text = TOKEN_PATH.sub(lambda m: f"{m.group(1)}{MASKED}", text)
    text = SIGNED_TOKEN.sub(MASKED, text)
    return EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret, including passwords inside service URLs, longest first."""
    values = [*settings.secret_keys, *settings.event_secrets, settings.admin_token]
    values += [settings.email_hash_key, settings.redis_sentinel_password]
    for url in (settings.database_url, settings.redis_url, settings.smtp_url):
        password = urlsplit(url).password
        if password:
            values += [password, unquote(password)]
    found = {v for v in values if len(v) >= SECRET_MIN}
    return sorted(found, key=len, reverse=True)  # a secret containing another goes first


class RequestIdFilter(logging.Filter):
    """Stamps every record passing the handler with the id of the request it belongs to."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            rid = REQUEST_ID.get()
            if rid is not None:
                record.request_id = rid
        return True


class JSONFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def _mask(self, text: str) -> str:
        return mask(text, self._secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self._mask(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_") or key in entry:
                continue
            if value is None or isinstance(value, bool | int | float):
                entry[key] = value
            else:
                entry[key] = self._mask(str(value))
        if record.exc_info:
            entry["exc"] = self._mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class ConsoleFormatter(JSONFormatter):
    """One readable line per record for a person watching `make run`: time, level, message,
    masked like the JSON lines. The request id and access fields are left out (they are in
    the message); any other `extra=` field follows as key=value."""

    QUIET = frozenset({"request_id", "method", "route", "status", "ms"})

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{when} {record.levelname:<7} {self._mask(record.getMessage())}"
        extras = [
            f"{key}={self._mask(str(value))}"
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_") and key not in self.QUIET
        ]
        if extras:
            line += "  " + " ".join(extras)
        if record.exc_info:
            line += "\n" + self._mask(self.formatException(record.exc_info))
        return line


def json_handler(
    stream: TextIO, secrets: Iterable[str] = (), *, console: bool = False
) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter(secrets) if console else JSONFormatter(secrets))
    handler.addFilter(RequestIdFilter())
    return handler


def setup_logging(
    level: str = "INFO",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    console: bool = False,
) -> None:
    """JSON lines (production), or readable console lines (`console`, the dev default)."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler(stream or sys.stderr, secrets, console=console)]
    root.setLevel(level.upper())
    for noisy in ("alembic", "arq.worker"):  # per-job lines at INFO would drown the rest
        logging.getLogger(noisy).setLevel(logging.WARNING)
