"""The one place notifier reads the time, so that tests can move it (time-machine)."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
