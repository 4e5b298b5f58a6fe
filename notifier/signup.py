"""Signup: record the request (subscriber, pending subscription, consent) and queue the mail."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.models import Subscriber, Subscription
from notifier.queries import insert_for, is_suppressed
from notifier.ratelimit import may_mail_address
from notifier.resources import Resources
from notifier.validation import EVIDENCE_MAX, SignupRequest

# A bot that knows one address could otherwise pile up rows under it; a person never needs more.
MAX_PENDING_PER_ADDRESS = 25


@dataclass(frozen=True)
class Evidence:
    """Who asked, from where: stored with the subscription as proof of consent."""

    ip: str
    user_agent: str | None
    source: str | None

    @classmethod
    def of(cls, ip: str, user_agent: str | None, source: str | None) -> Evidence:
        def bounded(value: str | None) -> str | None:
            return value[:EVIDENCE_MAX] if value else None

        return cls(ip=ip[:64], user_agent=bounded(user_agent), source=bounded(source))


@dataclass(frozen=True)
class Recorded:
    outcome: str  # new | pending | resubscribed | confirmed | too_many_pending | conflict
    subscriber_id: int = 0
    confirmed_before: bool = False

    @property
    def wants_mail(self) -> bool:
        return self.outcome in ("new", "pending", "resubscribed")


def new_nonce() -> str:
    return secrets.token_hex(16)


async def sign_up(r: Resources, req: SignupRequest, evidence: Evidence) -> str:
    """Record a signup and, within the address's limits, queue one confirmation mail.

    Returns the outcome for metrics; the caller answers the same way whatever it is.
    """
    if req.website:
        return "honeypot"
    email_hash = r.email_hash(req.email)
    for attempt in (1, 2):
        try:
            async with r.sessions.begin() as session:
                if await is_suppressed(session, email_hash):
                    return "suppressed"
                recorded = await _record(session, req, email_hash, evidence)
            break
        except IntegrityError:
            # Lost a race with the purge deleting this never-confirmed address: once more.
            if attempt == 2:
                raise
    if not recorded.wants_mail:
        return recorded.outcome
    if not await may_mail_address(r, email_hash, recorded.confirmed_before):
        return "rate_limited"
    await r.redis.enqueue_job("send_confirmation", recorded.subscriber_id)
    return recorded.outcome


async def _record(
    session: AsyncSession, req: SignupRequest, email_hash: str, evidence: Evidence
) -> Recorded:
    subscriber = await _lock_or_create_subscriber(session, req, email_hash)
    if subscriber is None:
        return Recorded("conflict")
    pending_before = await session.scalar(
        select(func.count())
        .select_from(Subscription)
        .where(Subscription.subscriber_id == subscriber.id, Subscription.status == "pending")
    )
    existing = await session.scalar(
        select(Subscription)
        .where(Subscription.subscriber_id == subscriber.id, Subscription.match_key == req.match_key)
        .with_for_update()
    )
    now = utcnow()
    request_fields: dict[str, Any] = {
        "label": req.label,
        "mesh_id": req.mesh_id,
        "broad": req.broad,
        "frequency": req.frequency,
        "requested_at": now,
        "request_ip": evidence.ip,
        "request_user_agent": evidence.user_agent,
        "request_source": evidence.source,
        "updated_at": now,
    }
    if existing is not None and existing.status == "confirmed":
        outcome = "confirmed"  # a repeat signup never downgrades a confirmed subscription
    elif existing is None or existing.status != "pending":
        if (pending_before or 0) >= MAX_PENDING_PER_ADDRESS:
            outcome = "too_many_pending"
        elif existing is None:
            session.add(
                Subscription(
                    subscriber_id=subscriber.id,
                    kind=req.kind,
                    match_key=req.match_key,
                    status="pending",
                    discreet=req.kind == "condition",
                    **request_fields,
                )
            )
            outcome = "new"
        else:  # unsubscribed: pending again, with fresh evidence; the old consent is void
            for name, value in request_fields.items():
                setattr(existing, name, value)
            existing.status = "pending"
            existing.confirmed_at = existing.unsubscribed_at = None
            existing.confirm_ip = existing.confirm_user_agent = None
            existing.unsubscribe_reason = None
            outcome = "resubscribed"
    else:  # pending: the latest request is what the confirmation will confirm
        for name, value in request_fields.items():
            setattr(existing, name, value)
        outcome = "pending"
    if outcome in ("new", "resubscribed", "pending") and (
        subscriber.confirm_nonce is None or not pending_before
    ):
        # Links mailed in an earlier round (nothing pending since) must not confirm this one.
        subscriber.confirm_nonce = new_nonce()
    return Recorded(outcome, subscriber.id, subscriber.first_confirmed_at is not None)


async def _lock_or_create_subscriber(
    session: AsyncSession, req: SignupRequest, email_hash: str
) -> Subscriber | None:
    # INSERT first: on SQLite it takes the write lock at once; on PostgreSQL the row lock below
    # serialises concurrent signups of one address.
    await session.execute(
        insert_for(session, Subscriber)
        .values(
            email=req.email,
            email_hash=email_hash,
            timezone=req.timezone or "UTC",
            created_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    subscriber: Subscriber | None = await session.scalar(
        select(Subscriber).where(Subscriber.email == req.email).with_for_update()
    )
    if subscriber is not None and req.timezone and subscriber.first_confirmed_at is None:
        # Only until the address confirms; afterwards the preference centre owns it.
        subscriber.timezone = req.timezone
    return subscriber
