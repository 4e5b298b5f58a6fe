"""Daily and weekly digests: one mail per subscriber per period, in their own timezone."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from arq import Retry
from redis.exceptions import RedisError
from sqlalchemy import and_, exists, func, not_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core.matching import Matched, active_matches, match_keys
from notifier.data import queries
from notifier.data.models import Delivery, Event, Subscriber, Subscription
from notifier.data.states import DeliveryStatus
from notifier.jobs.context import resources_of
from notifier.jobs.outcomes import ERROR_MAX
from notifier.jobs.retry import until_written
from notifier.logs import mask
from notifier.mail.digest import render_digest
from notifier.mail.message import Mail, message_id, sender_address, to_bytes
from notifier.mail.summaries import summarize
from notifier.mailer import SendError
from notifier.metrics import DELIVERIES, MAILS
from notifier.queue import enqueue_digest
from notifier.resources import Resources

log = logging.getLogger("notifier.digests")

MAX_ITEMS = 100  # per mail; more waits for the next hourly tick (a second mail, nothing lost)
MAX_PAGES = 20  # held items read per subscriber and tick: MAX_ITEMS x MAX_PAGES
TICK_PAGE = 1000
# A claim older than this was left by a worker that died mid-send: the items go back to held.
STALE_CLAIM = timedelta(minutes=30)
CLAIMED = DeliveryStatus.DIGESTING


def zone(name: str | None) -> ZoneInfo:
    """The subscriber's IANA zone; an unknown or empty name means UTC."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def period_start(now: datetime, tz_name: str | None, frequency: str) -> datetime:
    """Start of the current period (UTC): local midnight today, or local Monday 00:00.

    A held item created before it belongs to a period that has ended, so it is due now.
    Instant subscriptions have no period: their held items (frequency changed since) are due.
    """
    if frequency not in ("daily", "weekly"):
        return now
    tz = zone(tz_name)
    local = now.astimezone(tz)
    day = local.date() - timedelta(days=local.weekday() if frequency == "weekly" else 0)
    # Built from the wall-clock date so DST days get their own offset.
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def fastest(frequencies: Sequence[str]) -> str:
    for frequency in ("instant", "daily", "weekly"):
        if frequency in frequencies:
            return frequency
    return "daily"


# -- the hourly tick --------------------------------------------------------------------------


async def digest_tick(ctx: dict[str, Any]) -> int:
    """Enqueue a digest job for every subscriber with held items whose period has ended."""
    r = resources_of(ctx)
    now = utcnow()
    await release_stale_claims(r, now)
    enqueued, cursor = 0, 0
    while True:
        async with r.sessions() as session:
            page = await _held_page(session, cursor)
        for subscriber_id, tz_name, oldest, weekly_only in page:
            if oldest < period_start(now, tz_name, "weekly" if weekly_only else "daily"):
                enqueued += await _enqueue(r, subscriber_id, now)
        if len(page) < TICK_PAGE:
            return enqueued
        cursor = page[-1][0]


async def _held_page(session: AsyncSession, cursor: int) -> list[tuple[int, str, datetime, bool]]:
    """(subscriber id, timezone, oldest held item, every active subscription is weekly)."""

    def active(*frequencies: str) -> Any:
        return exists(
            select(Subscription.id).where(
                Subscription.subscriber_id == Delivery.subscriber_id,
                Subscription.status == "confirmed",
                Subscription.paused.is_(False),
                Subscription.frequency.in_(frequencies),
            )
        )

    # Weekly only when every active subscription is weekly; with none left, the daily run
    # finds that out and skips the items instead of keeping them for a week.
    weekly_only = and_(active("weekly"), not_(active("instant", "daily")))
    rows = await session.execute(
        select(
            Delivery.subscriber_id, Subscriber.timezone, func.min(Delivery.created_at), weekly_only
        )
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.status == DeliveryStatus.HELD, Delivery.subscriber_id > cursor)
        .group_by(Delivery.subscriber_id, Subscriber.timezone)
        .order_by(Delivery.subscriber_id)
        .limit(TICK_PAGE)
    )
    return [(sid, tz, oldest, bool(weekly)) for sid, tz, oldest, weekly in rows]


async def _enqueue(r: Resources, subscriber_id: int, now: datetime) -> int:
    # One job per subscriber per hourly tick; the job's claims make any repeat harmless.
    try:
        job = await enqueue_digest(r, subscriber_id, f"{now:%Y%m%d%H}")
    except (RedisError, OSError) as exc:
        log.warning(
            "digest for subscriber %s not enqueued (next tick retries): %s", subscriber_id, exc
        )
        return 0
    return 1 if job is not None else 0


async def release_stale_claims(r: Resources, now: datetime) -> int:
    """Items claimed by a worker that died before finishing go back to held (at least once)."""
    async with r.sessions.begin() as session:
        result = await session.execute(
            update(Delivery)
            .where(Delivery.status == CLAIMED, Delivery.next_attempt_at < now - STALE_CLAIM)
            .values(status="held", message_id=None)
        )
    return int(getattr(result, "rowcount", 0) or 0)


# -- one subscriber's digest ------------------------------------------------------------------


@dataclass
class Digest:
    """What one run found for one subscriber: the mail and the rows it covers."""

    subscriber_id: int
    msgid: str
    claimed: list[int] = field(default_factory=list)
    event_pks: list[int] = field(default_factory=list)  # of the claimed rows: their partitions
    period_end: datetime | None = None
    mail: Mail | None = None


async def send_digest(ctx: dict[str, Any], subscriber_id: int) -> str:
    """Claim the subscriber's due held items, mail them as one digest, mark them sent."""
    r = resources_of(ctx)
    now = utcnow()
    async with r.sessions.begin() as session:
        digest = await claim_digest(session, r, subscriber_id, now)
    if digest.mail is None:
        return "nothing"
    wire = to_bytes(r.settings, digest.mail, msgid=digest.msgid)
    try:
        await r.mailer.send_one(sender_address(r.settings), digest.mail.to, wire)
    except SendError as exc:
        return await _failed(ctx, r, digest, exc)

    async def mark_sent() -> None:
        async with r.sessions.begin() as session:
            await session.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_(digest.claimed),
                    *queries.in_partitions(digest.event_pks),
                    queries.delivery_status_is(CLAIMED),
                )
                .values(status=DeliveryStatus.SENT, sent_at=utcnow(), last_error=None)
            )
            subscriber = await session.get(Subscriber, subscriber_id)
            if subscriber is not None and digest.period_end is not None:
                last = subscriber.last_digest_at
                end = digest.period_end
                subscriber.last_digest_at = max(last, end) if last else end

    # The relay has the digest: record it even through a database outage, or the claim would
    # be released and the digest mailed again (the send path does the same).
    await until_written(r, mark_sent)
    MAILS.labels(kind="digest").inc()
    DELIVERIES.labels(outcome="sent").inc(len(digest.claimed))
    return "sent"


async def claim_digest(
    session: AsyncSession, r: Resources, subscriber_id: int, now: datetime
) -> Digest:
    """Within one transaction: re-check the address and each item, claim what is due, render."""
    digest = Digest(subscriber_id, message_id(r.settings))
    subscriber = await session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return digest
    held = (
        select(Delivery, Event)
        .join(Event, Event.id == Delivery.event_pk)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status == DeliveryStatus.HELD)
        .order_by(Delivery.created_at, Delivery.id)
    )
    rows = list((await session.execute(held.limit(MAX_ITEMS))).all())
    if not rows:
        return digest
    if await queries.is_suppressed(session, subscriber.email_hash):
        await _skip(session, [d for d, _ in rows], "suppressed")
        DELIVERIES.labels(outcome="suppressed").inc(len(rows))
        return digest
    due: list[tuple[Delivery, Event, list[Matched]]] = []
    dropped: list[Delivery] = []
    pages = 1
    # Items of a weekly subscription that are not due yet must not hold back due daily ones:
    # read further pages (bounded) until a mail's worth is due or the held items run out.
    while len(rows) == MAX_ITEMS and pages < MAX_PAGES:
        last = rows[-1][0]
        more = (
            await session.execute(
                held.where(
                    tuple_(Delivery.created_at, Delivery.id) > (last.created_at, last.id)
                ).limit(MAX_ITEMS)
            )
        ).all()
        rows.extend(more)
        pages += 1
        if len(more) < MAX_ITEMS:
            break
    for delivery, event in rows:
        if len(due) >= MAX_ITEMS:
            break  # a mail's worth; the rest goes in the next digest
        subs = (await active_matches(session, match_keys(event.payload), [subscriber_id])).get(
            subscriber_id, []
        )
        if not subs or not summarize(event.payload).material:
            dropped.append(delivery)
            continue
        frequency = fastest([s.frequency for s in subs])
        start = period_start(now, subscriber.timezone, frequency)
        if frequency == "instant" or delivery.created_at < start:
            due.append((delivery, event, subs))
            digest.period_end = max(digest.period_end or start, start)
    await _skip(session, dropped, "no active subscription")
    if not due:
        return digest
    claimed = await session.scalars(
        update(Delivery)
        .where(
            Delivery.id.in_([d.id for d, _, _ in due]),
            *queries.in_partitions(sorted({d.event_pk for d, _, _ in due})),
            queries.delivery_status_is(DeliveryStatus.HELD),
        )
        .values(
            status=CLAIMED,
            message_id=digest.msgid,
            next_attempt_at=now,
            attempts=Delivery.attempts + 1,
        )
        .returning(Delivery.id)
    )
    digest.claimed = sorted(claimed)
    kept = [(e, subs) for d, e, subs in due if d.id in set(digest.claimed)]
    digest.event_pks = sorted({e.id for e, _ in kept})
    if kept:
        frequency = (
            "daily" if any(s.frequency != "weekly" for _, subs in kept for s in subs) else "weekly"
        )
        digest.mail = render_digest(r.mail, subscriber, kept, frequency=frequency, now=now)
    return digest


async def _skip(session: AsyncSession, rows: list[Delivery], reason: str) -> None:
    if rows:
        await session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_([d.id for d in rows]),
                *queries.in_partitions(sorted({d.event_pk for d in rows})),
                queries.delivery_status_is(DeliveryStatus.HELD),
            )
            .values(status="skipped", last_error=reason)
        )
        DELIVERIES.labels(outcome="skipped").inc(len(rows))


async def _failed(ctx: dict[str, Any], r: Resources, digest: Digest, exc: SendError) -> str:
    """Transient: back to held, retried along the ladder. Permanent: failed; 5.1.x suppresses."""
    permanent = exc.permanent
    async with r.sessions.begin() as session:
        status = "failed" if permanent else "held"
        await session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(digest.claimed),
                *queries.in_partitions(digest.event_pks),
                queries.delivery_status_is(CLAIMED),
            )
            .values(status=status, last_error=str(exc)[:ERROR_MAX], message_id=None)
        )
        if exc.suppresses:
            subscriber = await session.get(Subscriber, digest.subscriber_id)
            if subscriber is not None:
                await queries.suppress(
                    session, subscriber.email_hash, "hard_bounce", str(exc)[:ERROR_MAX]
                )
    if permanent:
        log.warning("digest for subscriber %s refused: %s", digest.subscriber_id, mask(str(exc)))
        DELIVERIES.labels(outcome="failed").inc(len(digest.claimed))
        return "failed"
    DELIVERIES.labels(outcome="retry").inc(len(digest.claimed))
    ladder = r.settings.retry_ladder
    attempt = int(ctx.get("job_try", 1))
    if attempt <= len(ladder):
        raise Retry(defer=ladder[attempt - 1]) from exc
    # Past the ladder the items stay held: the hourly tick tries again, for as long as SMTP is out.
    return "deferred"
