"""Periodic housekeeping: purge pending subscriptions (and addresses) that were never confirmed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exists, select

from notifier.clock import utcnow
from notifier.data.models import Subscriber, Subscription
from notifier.data.states import SubscriptionStatus
from notifier.jobs.context import resources_of

ORPHAN_BATCH = 5000  # per run, so one statement stays small; the next run takes the rest


async def purge_pending(ctx: dict[str, Any]) -> int:
    """Delete pending subscriptions older than NOTIFIER_PENDING_MAX_AGE_DAYS; returns how many.

    An address that never confirmed anything and has nothing left is deleted too: without
    consent there is no reason to keep it (its suppression, if any, is a separate hash).
    """
    r = resources_of(ctx)
    cutoff = utcnow() - timedelta(days=r.settings.pending_max_age_days)
    async with r.sessions.begin() as session:
        result = await session.execute(
            delete(Subscription).where(
                Subscription.status == SubscriptionStatus.PENDING,
                Subscription.requested_at < cutoff,
            )
        )
    has_subscriptions = exists().where(Subscription.subscriber_id == Subscriber.id)
    async with r.sessions.begin() as session:
        # Lock first (skipping addresses a signup holds), then delete in a second statement,
        # whose fresh snapshot sees any subscription committed in between.
        orphans = list(
            await session.scalars(
                select(Subscriber.id)
                .where(
                    Subscriber.first_confirmed_at.is_(None),
                    Subscriber.created_at < cutoff,
                    ~has_subscriptions,
                )
                .limit(ORPHAN_BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        if orphans:
            await session.execute(
                delete(Subscriber).where(Subscriber.id.in_(orphans), ~has_subscriptions)
            )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]  # CursorResult has rowcount
