"""Mails tried again after their worker died (rows claimed again, a slice taken again): those the
relay had already accepted (a receipt in Redis, notifier/data/receipts.py) are recorded as sent
instead of mailed a second time."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select

from notifier.data.models import Event
from notifier.data.states import DeliveryStatus
from notifier.jobs.outcomes import Claimed, Outcome, SliceClaim, record
from notifier.metrics import RESENDS_AVOIDED
from notifier.resources import Resources

log = logging.getLogger("notifier.sending")


async def unless_already_sent(
    r: Resources, claimed: list[Claimed], slice_: SliceClaim | None = None
) -> list[Claimed]:
    """The claimed mails still to send. Those tried before (attempts > 1) whose receipt says
    the relay accepted them are recorded `sent`, with the receipt's Message-ID and time, and
    left out; when Redis does not answer, none are (sent again: at least once)."""
    again = [c for c in claimed if c.attempts > 1]
    if not again:
        return claimed
    async with r.sessions() as session:
        event_at = dict(
            (
                await session.execute(
                    select(Event.id, Event.received_at).where(
                        Event.id.in_({c.event_pk for c in again})
                    )
                )
            ).all()
        )
    asked = [
        (c.event_pk, c.subscriber_id, event_at[c.event_pk]) for c in again if c.event_pk in event_at
    ]
    if not (found := await r.receipts.read(asked)):
        return claimed
    accepted = [
        Outcome(c, DeliveryStatus.SENT, message_id=m[0], sent_at=m[1])
        for c in claimed
        if (m := found.get((c.event_pk, c.subscriber_id))) is not None
    ]
    await record(r, accepted, {}, [], slice_=slice_)
    await r.receipts.delete(found)
    RESENDS_AVOIDED.inc(len(accepted))
    log.info("%d message(s) sent before their worker died recorded as sent", len(accepted))
    return [c for c in claimed if (c.event_pk, c.subscriber_id) not in found]


def forget_sent(r: Resources, outcomes: Iterable[Outcome]) -> None:
    """These outcomes are in PostgreSQL: the receipts of the sent ones can go."""
    r.receipts.forget(
        (o.delivery.event_pk, o.delivery.subscriber_id)
        for o in outcomes
        if o.status == DeliveryStatus.SENT
    )
