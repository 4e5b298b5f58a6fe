"""The retry policy, in one place: the SMTP backoff ladder, and writes that wait out a database.

Alerts retry along NOTIFIER_RETRY_LADDER through their delivery rows (jobs.outcomes). One-off
transactional mails (confirmation, manage link) have no delivery row and the person can simply
ask again, so a failure is retried by arq for the length of the ladder and then dropped; 5.1.x
suppresses. Outcomes of mail already handed to SMTP wait out a database outage (until_written).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from notifier.data.db import transient_db_error
from notifier.data.queries import suppress
from notifier.logs import mask
from notifier.mailer import SendError
from notifier.resources import Resources

log = logging.getLogger("notifier.retry")

# How long a batch waits for an unreachable database to record what it sent. Longer than this
# (or than NOTIFIER_SWEEP_STALE_AFTER) and the sweep may re-send the batch's unrecorded messages.
RECORD_RETRY_FOR = 300.0


def retry_if_database_unreachable(exc: BaseException, ctx: dict[str, Any], what: str) -> None:
    """arq re-runs a job only when it raises Retry: a job handed to the queue (a queued event, a
    confirm link for a signup already answered 202) must survive a database outage, so wait for
    it (1, 2, 4 … 60 s) instead of failing for good. Returns when the error is not transient."""
    if transient_db_error(exc):
        tries = int(ctx.get("job_try", 1))
        log.warning("database unreachable, %s retried (try %d)", what, tries)
        raise Retry(defer=min(60, 2 ** (tries - 1))) from exc


DEFER_MARGIN = 0.01  # a retry job never wakes before its rows' next_attempt_at


def retry_delay(r: Resources, attempts: int) -> float:
    """The visible backoff ladder: settings.retry_ladder, its last step repeated."""
    ladder = r.settings.retry_ladder
    return ladder[min(max(attempts, 1) - 1, len(ladder) - 1)]


async def retry_or_give_up(
    r: Resources, ctx: dict[str, Any], email_hash: str, exc: SendError, what: str
) -> str:
    """Raise arq's Retry for a transient failure still on the ladder; else record and give up."""
    ladder = r.settings.retry_ladder
    tries = int(ctx.get("job_try", 1))
    if not exc.permanent and tries <= len(ladder):
        log.warning(
            "%s deferred (try %d), retrying in %g s: %s",
            what,
            tries,
            ladder[tries - 1],
            mask(str(exc)),
        )
        raise Retry(defer=ladder[tries - 1]) from exc
    if exc.suppresses:
        async with r.sessions.begin() as session:
            await suppress(session, email_hash, "hard_bounce", str(exc)[:500])
    log.warning("%s not delivered after %d tries: %s", what, tries, mask(str(exc)))
    return "failed"


async def until_written(r: Resources, write: Callable[[], Awaitable[None]]) -> None:
    """Keep trying while PostgreSQL is unreachable: mail already handed to SMTP must be recorded
    as sent, or the sweep would send it again once the database is back. Sending waits too."""
    deadline = time.monotonic() + RECORD_RETRY_FOR
    delay = 0.05
    while True:
        try:
            await write()
            return
        except (DBAPIError, PoolTimeout, OSError) as exc:
            if not transient_db_error(exc) or time.monotonic() >= deadline:
                raise
            await r.outage.note()
            log.warning("outcomes not yet recorded, retrying: %s", type(exc).__name__)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
