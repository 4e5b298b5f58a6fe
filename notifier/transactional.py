"""One-off transactional mails (confirmation, manage link): retry along the ladder, then give up.

They are not alerts: no delivery row, and the person can simply ask again, so a failure is
retried by arq for the length of NOTIFIER_RETRY_LADDER and then dropped; 5.1.x suppresses.
"""

from __future__ import annotations

import logging
from typing import Any

from arq import Retry

from notifier.mailer import SendError
from notifier.queries import suppress
from notifier.resources import Resources

log = logging.getLogger("notifier.transactional")


async def retry_or_give_up(
    r: Resources, ctx: dict[str, Any], email_hash: str, exc: SendError, what: str
) -> str:
    """Raise arq's Retry for a transient failure still on the ladder; else record and give up."""
    ladder = r.settings.retry_ladder
    tries = int(ctx.get("job_try", 1))
    if not exc.permanent and tries <= len(ladder):
        raise Retry(defer=ladder[tries - 1]) from exc
    if exc.suppresses:
        async with r.sessions.begin() as session:
            await suppress(session, email_hash, "hard_bounce", str(exc)[:500])
    log.warning("%s not delivered after %d tries: %s", what, tries, exc)
    return "failed"
