"""Rows claimed again after their worker died: those the relay had already accepted (a receipt
in Redis, notifier/data/receipts.py) are recorded as sent instead of mailed a second time."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from notifier.data.states import DeliveryStatus
from notifier.jobs.outcomes import Claimed, Outcome, record
from notifier.metrics import RESENDS_AVOIDED
from notifier.resources import Resources

log = logging.getLogger("notifier.sending")


async def unless_already_sent(r: Resources, claimed: list[Claimed]) -> list[Claimed]:
    """The claimed rows still to send. Those claimed before (attempts > 1) whose receipt says
    the relay accepted them are recorded `sent`, with the receipt's Message-ID and time, and
    left out; when Redis does not answer, none are (sent again: at least once)."""
    again = [(c.id, c.created_at) for c in claimed if c.attempts > 1]
    if not again or not (found := await r.receipts.read(again)):
        return claimed
    accepted = [
        Outcome(c, DeliveryStatus.SENT, message_id=found[c.id][0], sent_at=found[c.id][1])
        for c in claimed
        if c.id in found
    ]
    await record(r, accepted, {}, [])
    await r.receipts.delete(found)
    RESENDS_AVOIDED.inc(len(accepted))
    log.info("%d message(s) sent before their worker died recorded as sent", len(accepted))
    return [c for c in claimed if c.id not in found]


def forget_sent(r: Resources, outcomes: Iterable[Outcome]) -> None:
    """These outcomes are in PostgreSQL: the receipts of the sent ones can go."""
    r.receipts.forget(o.delivery.id for o in outcomes if o.status == DeliveryStatus.SENT)
