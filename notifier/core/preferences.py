"""A subscriber's own choices: unsubscribe one or all, frequency, pause; a manage link."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core import ratelimit
from notifier.core.signup_input import CONDITION_CHANGES, STUDY_CHANGES
from notifier.data import queries
from notifier.data.models import Subscriber, Subscription
from notifier.data.states import Frequency
from notifier.metrics import UNSUBSCRIBES
from notifier.queue import enqueue_manage_link
from notifier.resources import Resources

log = logging.getLogger("notifier.preferences")

Via = Literal["one_click", "link", "manage"]
FREQUENCY_WORDS = {"instant": "as they happen", "daily": "once a day", "weekly": "once a week"}
FREQUENCIES = tuple(Frequency)


class NotYours(Exception):
    """The subscription does not exist or belongs to another address: answer 404."""


class NotAllowed(Exception):
    """The change cannot apply to this subscription in its state: answer 422."""


@dataclass(frozen=True)
class Unsubscribed:
    """What a one-subscription unsubscribe found; `changed` is False on a repeat."""

    changed: bool
    label: str | None
    subscriber_id: int | None


async def unsubscribe(session: AsyncSession, subscription_id: int, via: Via) -> Unsubscribed:
    """End one subscription; idempotent, and harmless when it was erased meanwhile."""
    now = utcnow()
    changed = await session.scalar(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.status != "unsubscribed")
        .values(status="unsubscribed", unsubscribed_at=now, unsubscribe_reason=via, updated_at=now)
        .returning(Subscription.id)
    )
    row = (
        await session.execute(
            select(Subscription.label, Subscription.subscriber_id).where(
                Subscription.id == subscription_id
            )
        )
    ).one_or_none()
    if changed is not None:
        UNSUBSCRIBES.labels(via=via).inc()
    return Unsubscribed(
        changed=changed is not None,
        label=row.label if row else None,
        subscriber_id=row.subscriber_id if row else None,
    )


async def unsubscribe_all(session: AsyncSession, subscriber: Subscriber) -> int:
    """End every subscription and suppress the address: "never hear from us again"."""
    now = utcnow()
    ended = await session.scalars(
        update(Subscription)
        .where(Subscription.subscriber_id == subscriber.id, Subscription.status != "unsubscribed")
        .values(
            status="unsubscribed", unsubscribed_at=now, unsubscribe_reason="manage", updated_at=now
        )
        .returning(Subscription.id)
    )
    count = len(list(ended))
    await queries.suppress(session, subscriber.email_hash, "unsubscribed_all")
    if count:
        UNSUBSCRIBES.labels(via="manage").inc(count)
    return count


async def subscriptions_of(session: AsyncSession, subscriber_id: int) -> list[Subscription]:
    rows = await session.scalars(
        select(Subscription)
        .where(Subscription.subscriber_id == subscriber_id)
        .order_by(Subscription.requested_at, Subscription.id)
    )
    return list(rows)


async def _owned(session: AsyncSession, subscriber_id: int, subscription_id: int) -> Subscription:
    found = await session.scalar(
        select(Subscription)
        .where(Subscription.id == subscription_id, Subscription.subscriber_id == subscriber_id)
        .with_for_update()
    )
    if found is None:
        raise NotYours(subscription_id)
    return found


# What a subscription mails about, as the preference centre offers it: a plain label per group
# of change kinds (the API's `changes` takes the kinds themselves).
STUDY_CHOICES: dict[str, tuple[str, ...]] = {
    "recruitment status": ("status_changed",),
    "results posted": ("results_posted",),
    "dates": ("dates_changed",),
    "sites": ("recruitment_sites_changed",),
    "any other update": ("study_updated", "conditions_changed", "study_unavailable", "new_study"),
}
CONDITION_CHOICES: dict[str, tuple[str, ...]] = {
    "new matching studies": ("new_study",),
    "a matching study starts recruiting": ("starts_recruiting",),
}
DEFAULT_KINDS = {"study": STUDY_CHANGES, "condition": ("new_study",)}


def choices_of(sub: Subscription) -> list[tuple[str, bool]]:
    """(plain label, chosen) for each group the subscription may choose."""
    groups = STUDY_CHOICES if sub.kind == "study" else CONDITION_CHOICES
    kinds = set(sub.event_kinds or DEFAULT_KINDS[sub.kind])
    return [(label, set(group) <= kinds) for label, group in groups.items()]


def kinds_for(kind: str, labels: list[str]) -> list[str] | None:
    """The change kinds of the chosen groups; None when that is every kind (the default)."""
    groups = STUDY_CHOICES if kind == "study" else CONDITION_CHOICES
    unknown = [label for label in labels if label not in groups]
    if unknown or not labels:
        raise NotAllowed("choose at least one kind of change (or unsubscribe)")
    chosen = {k for label in labels for k in groups[label]}
    allowed = DEFAULT_KINDS[kind] if kind == "study" else CONDITION_CHANGES
    ordered = [k for k in allowed if k in chosen]
    return None if kind == "study" and len(ordered) == len(STUDY_CHANGES) else ordered


async def change(
    session: AsyncSession,
    subscriber_id: int,
    action: str,
    subscription_id: int | None,
    frequency: str | None = None,
    changes: list[str] | None = None,
) -> str | None:
    """Apply one preference-centre action; returns the sentence to show the subscriber.

    None when the subscriber no longer exists (erased): there is nothing left to change.
    """
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    if action == "unsubscribe_all":
        await unsubscribe_all(session, subscriber)
        return "You are unsubscribed from every alert and will get no more mail from us."
    if subscription_id is None:
        raise NotAllowed("choose a subscription")
    sub = await _owned(session, subscriber.id, subscription_id)
    if action == "unsubscribe":
        await unsubscribe(session, sub.id, "manage")
        return f"You will get no more alerts about {sub.label}."
    if sub.status == "unsubscribed":
        raise NotAllowed("this subscription has ended; sign up again on the website to restart it")
    now = utcnow()
    if action == "frequency":
        if frequency not in FREQUENCIES:
            raise NotAllowed("frequency must be instant, daily or weekly")
        sub.frequency, sub.updated_at = frequency, now
        return f"Alerts about {sub.label} now come {FREQUENCY_WORDS[frequency]}."
    if action == "changes":
        sub.event_kinds, sub.updated_at = kinds_for(sub.kind, changes or []), now
        chosen = ", ".join(label for label, on in choices_of(sub) if on)
        return f"Alerts about {sub.label} now cover: {chosen}."
    if action in ("pause", "resume"):
        sub.paused, sub.updated_at = action == "pause", now
        verb = "paused" if sub.paused else "resumed"
        return f"Alerts about {sub.label} are {verb}."
    raise NotAllowed(f"unknown action {action!r}")


# ---- the manage-link mail -------------------------------------------------------------------


async def manage_link_recipient(
    session: AsyncSession, r: Resources, email: str
) -> Subscriber | None:
    """The subscriber to mail a manage link to, or None (unknown or suppressed address)."""
    email_hash = r.email_hash(email)
    subscriber: Subscriber | None = await session.scalar(
        select(Subscriber).where(Subscriber.email_hash == email_hash)
    )
    if subscriber is None or await queries.is_suppressed(session, email_hash):
        return None
    return subscriber


async def request_manage_link(r: Resources, ip: str, email: str) -> int | None:
    """Mail a manage link if the address has alerts; Retry-After seconds when the IP is over.

    The caller answers the same whatever happens here, so the answer reveals no address.
    """
    retry_after = await ratelimit.ip_retry_after(r, ip)
    if retry_after is not None:
        return retry_after
    async with r.sessions.begin() as session:
        subscriber = await manage_link_recipient(session, r, email)
    if subscriber is None:
        return None
    confirmed_before = subscriber.first_confirmed_at is not None
    if await ratelimit.may_mail_address(r, subscriber.email_hash, confirmed_before):
        await enqueue_manage_link(r, subscriber.id)
    return None
