"""The suppression list, bounce intake (the soft-bounce rule), GDPR export and erasure."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Delete, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.data import queries
from notifier.data.models import Bounce, Delivery, Event, Subscriber, Subscription, Suppression
from notifier.resources import Resources

# The reason each bounce kind puts on the suppression list.
BOUNCE_REASONS = {"hard": "hard_bounce", "complaint": "complaint", "soft": "soft_bounces"}


def suppression_json(row: Suppression) -> dict[str, Any]:
    return {
        "id": row.id,
        "email_hash": row.email_hash,
        "reason": row.reason,
        "detail": row.detail,
        "created_at": _iso(row.created_at),
    }


async def list_page(
    session: AsyncSession, *, email_hash: str | None, after: int, limit: int
) -> list[Suppression]:
    """Keyset pagination by id: stable however long the list and whatever is added meanwhile."""
    stmt = select(Suppression).where(Suppression.id > after).order_by(Suppression.id).limit(limit)
    if email_hash is not None:
        stmt = stmt.where(Suppression.email_hash == email_hash)
    return list(await session.scalars(stmt))


async def add(
    session: AsyncSession, email_hash: str, reason: str, detail: str | None
) -> tuple[Suppression, bool]:
    """Suppress (ending every subscription); returns the row and whether it is new."""
    created = await queries.suppress(session, email_hash, reason, detail)
    row = await session.scalar(select(Suppression).where(Suppression.email_hash == email_hash))
    if row is None:  # inserted in this very transaction, so only a broken database gets here
        raise RuntimeError("suppression row vanished")
    return row, created


async def remove(session: AsyncSession, email_hash: str) -> bool:
    """Lift a suppression. Ended subscriptions stay ended: only a new signup restarts mail."""
    deleted = await session.scalar(
        delete(Suppression).where(Suppression.email_hash == email_hash).returning(Suppression.id)
    )
    return deleted is not None


async def record_bounce(
    session: AsyncSession, r: Resources, email_hash: str, kind: str, detail: str | None
) -> bool:
    """Store one bounce or complaint; returns True when it newly suppressed the address."""
    now = utcnow()
    session.add(Bounce(email_hash=email_hash, kind=kind, detail=detail, created_at=now))
    await session.flush()
    if kind == "soft":
        since = now - timedelta(days=r.settings.soft_bounce_window_days)
        recent = await session.scalar(
            select(func.count(Bounce.id)).where(
                Bounce.email_hash == email_hash, Bounce.kind == "soft", Bounce.created_at >= since
            )
        )
        if (recent or 0) < r.settings.soft_bounce_limit:
            return False
        detail = f"{recent} soft bounces in {r.settings.soft_bounce_window_days} days"
    return await queries.suppress(session, email_hash, BOUNCE_REASONS[kind], detail)


async def export(session: AsyncSession, r: Resources, email: str) -> dict[str, Any]:
    """Everything held about one address (GDPR access request)."""
    email_hash = r.email_hash(email)
    subscriber = await session.scalar(select(Subscriber).where(Subscriber.email_hash == email_hash))
    subscriptions: list[Subscription] = []
    deliveries: list[dict[str, Any]] = []
    if subscriber is not None:
        subscriptions = list(
            await session.scalars(
                select(Subscription)
                .where(Subscription.subscriber_id == subscriber.id)
                .order_by(Subscription.id)
            )
        )
        rows = await session.execute(
            select(Delivery, Event.event_id, Event.nct_id, Event.change_kind)
            .join(Event, Event.id == Delivery.event_pk)
            .where(Delivery.subscriber_id == subscriber.id)
            .order_by(Delivery.id)
        )
        deliveries = [_delivery_json(*row) for row in rows]
    suppression = await session.scalar(
        select(Suppression).where(Suppression.email_hash == email_hash)
    )
    bounces = await session.scalars(
        select(Bounce).where(Bounce.email_hash == email_hash).order_by(Bounce.id)
    )
    return {
        "subscriber": _subscriber_json(subscriber) if subscriber else None,
        "subscriptions": [_subscription_json(s) for s in subscriptions],
        "deliveries": deliveries,
        "suppression": suppression_json(suppression) if suppression else None,
        "bounces": [
            {"kind": b.kind, "detail": b.detail, "created_at": _iso(b.created_at)} for b in bounces
        ],
    }


async def erase(session: AsyncSession, r: Resources, email: str) -> dict[str, int]:
    """Delete the address and all tied to it; keep only its keyed hash, suppressed ("erased")."""
    email_hash = r.email_hash(email)
    counts = {"subscribers": 0, "subscriptions": 0, "deliveries": 0, "bounces": 0}
    subscriber_id = await session.scalar(
        select(Subscriber.id).where(Subscriber.email_hash == email_hash)
    )
    if subscriber_id is not None:
        # Explicit deletes, children first: the counts are the answer, and no dialect's
        # foreign-key setting can leave a row behind.
        for name, model in (("deliveries", Delivery), ("subscriptions", Subscription)):
            counts[name] = await _delete_count(
                session, delete(model).where(model.subscriber_id == subscriber_id)
            )
        counts["subscribers"] = await _delete_count(
            session, delete(Subscriber).where(Subscriber.id == subscriber_id)
        )
    counts["bounces"] = await _delete_count(
        session, delete(Bounce).where(Bounce.email_hash == email_hash)
    )
    await queries.suppress(session, email_hash, "erased")
    # A bounce's detail may quote the address: an existing entry keeps its reason, not its words.
    await session.execute(
        update(Suppression).where(Suppression.email_hash == email_hash).values(detail=None)
    )
    return counts


async def _delete_count(session: AsyncSession, stmt: Delete) -> int:
    result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]  # a DELETE gives CursorResult


def _subscriber_json(s: Subscriber) -> dict[str, Any]:
    return {
        "email": s.email,
        "timezone": s.timezone,
        "created_at": _iso(s.created_at),
        "first_confirmed_at": _iso(s.first_confirmed_at),
    }


def _subscription_json(s: Subscription) -> dict[str, Any]:
    return {
        "id": s.id,
        "kind": s.kind,
        "label": s.label,
        "mesh_id": s.mesh_id,
        "broad": s.broad,
        "status": s.status,
        "paused": s.paused,
        "frequency": s.frequency,
        "event_kinds": s.event_kinds,
        "consent": {
            "requested_at": _iso(s.requested_at),
            "request_ip": s.request_ip,
            "request_user_agent": s.request_user_agent,
            "request_source": s.request_source,
            "confirmed_at": _iso(s.confirmed_at),
            "confirm_ip": s.confirm_ip,
            "confirm_user_agent": s.confirm_user_agent,
        },
        "unsubscribed_at": _iso(s.unsubscribed_at),
        "unsubscribe_reason": s.unsubscribe_reason,
    }


def _delivery_json(d: Delivery, event_id: str, nct_id: str, change_kind: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "nct_id": nct_id,
        "change_kind": change_kind,
        "status": d.status,
        "attempts": d.attempts,
        "created_at": _iso(d.created_at),
        "sent_at": _iso(d.sent_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
