"""Periodic housekeeping: purge pending subscriptions that were never confirmed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete

from notifier.clock import utcnow
from notifier.models import Subscription
from notifier.worker import register, register_cron, resources_of


@register("purge_pending")
async def purge_pending(ctx: dict[str, Any]) -> int:
    r = resources_of(ctx)
    cutoff = utcnow() - timedelta(days=r.settings.pending_max_age_days)
    async with r.sessions.begin() as session:
        result = await session.execute(
            delete(Subscription).where(
                Subscription.status == "pending", Subscription.requested_at < cutoff
            )
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]  # CursorResult has rowcount


register_cron("purge_pending_cron", minute={7}, second={0})(purge_pending)
