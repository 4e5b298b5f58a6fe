"""The send job: claim delivery rows, re-check them, mail over one SMTP connection, record outcomes.

Outcomes are written at least every FLUSH_SECONDS and at the end of the batch, so a worker killed
with SIGKILL can at most repeat the messages of its batch in flight that it had not yet recorded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from limits import RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from notifier import queries
from notifier.alerts import AlertRenderer
from notifier.clock import utcnow
from notifier.db import note_unreachable, transient_db_error, unreachable_within
from notifier.emails import message_id, sender_address, to_bytes
from notifier.mailer import ConnectionLost, SendError
from notifier.matching import MatchKeys, active_matches, match_keys
from notifier.metrics import DELIVERIES, MAILS, SEND_SECONDS
from notifier.models import Delivery, Event, Subscriber
from notifier.resources import Resources
from notifier.worker import register, resources_of

log = logging.getLogger("notifier.sending")

FLUSH_SECONDS = 1.0
MAX_RECONNECTS = 3  # per batch: sessions a relay may drop before the rest waits for a retry
# How long a batch waits for an unreachable database to record what it sent. Longer than this
# (or than NOTIFIER_SWEEP_STALE_AFTER) and the sweep may re-send the batch's unrecorded messages.
RECORD_RETRY_FOR = 300.0
# A batch sends only while its claim is younger than this share of NOTIFIER_SWEEP_STALE_AFTER:
# an older claim (its renewal held up by a database outage) may have been handed to another job.
CLAIM_LAPSE = 0.8
DIGEST_FREQUENCIES = ("daily", "weekly")
DEFER_MARGIN = 0.01  # a retry job never wakes before its rows' next_attempt_at


@dataclass(frozen=True)
class Claimed:
    id: int
    event_pk: int
    subscriber_id: int
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Outgoing:
    """A delivery that passed the checks; rendered just before it is sent, so a large batch
    neither holds every message in memory nor delays its first one."""

    delivery: Claimed
    email: str
    subscriptions: list[Any]


ERROR_MAX = 500  # deliveries.last_error and suppressions.detail


@dataclass(frozen=True)
class Outcome:
    delivery: Claimed
    status: str  # sent | retry | failed | skipped | held
    error: str | None = None
    message_id: str | None = None
    suppress: bool = False  # 5.1.x: the address goes on the suppression list

    def __post_init__(self) -> None:
        # Cut to the columns' width here, once: a longer text would fail the whole batch's
        # outcome UPDATE and leave its sent rows for the sweep to mail again.
        if self.error is not None and len(self.error) > ERROR_MAX:
            object.__setattr__(self, "error", self.error[:ERROR_MAX])


class SendRate:
    """`send_rate` messages/s over every worker, kept in Redis; waits rather than drops."""

    def __init__(self, r: Resources) -> None:
        rate = r.settings.send_rate
        self.enabled = rate > 0
        # An integer count per whole-second window that never exceeds the configured rate.
        window = max(1, math.ceil(1 / rate)) if self.enabled else 1
        self.item = RateLimitItemPerSecond(max(1, int(rate * window)), window)
        self.limiter = MovingWindowRateLimiter(r.limits_storage)

    async def acquire(
        self, heartbeat: Callable[[], Awaitable[None]] | None = None, every: float = 30.0
    ) -> None:
        """Wait for a slot; while waiting, call `heartbeat` every `every` seconds (the batch
        refreshes its claim, so the sweep never takes a slow but live batch for a dead one)."""
        if not self.enabled:
            return
        last = time.monotonic()
        while not await self.limiter.hit(self.item, "send"):
            stats = await self.limiter.get_window_stats(self.item, "send")
            await asyncio.sleep(min(1.0, every, max(0.005, stats.reset_time - time.time())))
            if heartbeat is not None and time.monotonic() - last >= every:
                await heartbeat()
                last = time.monotonic()


async def claim(r: Resources, ids: list[int]) -> list[Claimed]:
    """pending -> sending, atomically: two workers given the same ids never both get a row."""
    now = utcnow()
    async with r.sessions.begin() as session:
        rows = await session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(ids),
                queries.delivery_status_is("pending"),
                Delivery.next_attempt_at <= now,
            )
            # While sending, next_attempt_at holds the claim time: the sweep's dead-worker clock.
            .values(status="sending", attempts=Delivery.attempts + 1, next_attempt_at=now)
            .returning(
                Delivery.id,
                Delivery.event_pk,
                Delivery.subscriber_id,
                Delivery.attempts,
                Delivery.created_at,
            )
            .execution_options(synchronize_session=False)
        )
        return sorted((Claimed(*row) for row in rows), key=lambda c: c.id)


async def prepare(
    r: Resources, claimed: list[Claimed]
) -> tuple[list[Outgoing], list[Outcome], dict[int, str], dict[int, AlertRenderer]]:
    """Re-check each row against current subscriptions and suppressions."""
    outgoing: list[Outgoing] = []
    outcomes: list[Outcome] = []
    event_pks = {c.event_pk for c in claimed}
    async with r.sessions() as session:
        payloads: dict[int, dict[str, Any]] = dict(
            (
                await session.execute(
                    select(Event.id, Event.payload).where(Event.id.in_(event_pks))
                )
            ).all()
        )
        keys = {pk: match_keys(payload) for pk, payload in payloads.items()}
        # Plain columns, not ORM objects: this runs for every recipient of every fan-out.
        subscribers = {
            row.id: row
            for row in await session.execute(
                select(Subscriber.id, Subscriber.email, Subscriber.email_hash).where(
                    Subscriber.id.in_({c.subscriber_id for c in claimed})
                )
            )
        }
        matches = await _matches(session, keys, claimed)
        suppressed = await queries.suppressed_hashes(
            session, (s.email_hash for s in subscribers.values())
        )
    renderers = {pk: AlertRenderer(r, payload) for pk, payload in payloads.items()}
    for c in claimed:
        subscriber = subscribers.get(c.subscriber_id)
        subs = matches.get((c.event_pk, c.subscriber_id), [])
        if subscriber is None or c.event_pk not in payloads:
            outcomes.append(Outcome(c, "skipped", "subscriber or event gone"))
        elif subscriber.email_hash in suppressed:
            outcomes.append(Outcome(c, "skipped", "suppressed"))
            DELIVERIES.labels("suppressed").inc()
        elif not subs:
            outcomes.append(Outcome(c, "skipped", "no active matching subscription"))
        elif all(sub.frequency in DIGEST_FREQUENCIES for sub in subs):
            outcomes.append(Outcome(c, "held"))  # the digest job mails it
        else:
            outgoing.append(Outgoing(c, subscriber.email, subs))
    return outgoing, outcomes, {s.id: s.email_hash for s in subscribers.values()}, renderers


def render(
    r: Resources, renderers: dict[int, AlertRenderer], item: Outgoing
) -> tuple[Outcome, bytes | None]:
    """(the outcome once SMTP accepts it, the message's bytes), or (failed, None): one
    unrenderable event must not wedge a batch."""
    c = item.delivery
    try:
        mail = renderers[c.event_pk].render(
            subscriber_id=c.subscriber_id, email=item.email, subscriptions=item.subscriptions
        )
        msgid = message_id(r.settings)
        return Outcome(c, "sent", message_id=msgid), to_bytes(r.settings, mail, msgid=msgid)
    except Exception as exc:
        log.exception("cannot render delivery %d", c.id)
        return Outcome(c, "failed", f"render: {type(exc).__name__}: {exc}"), None


async def _matches(
    session: AsyncSession, keys: dict[int, MatchKeys], claimed: list[Claimed]
) -> dict[tuple[int, int], list[Any]]:
    found: dict[tuple[int, int], list[Any]] = {}
    for pk, mk in keys.items():
        ids = [c.subscriber_id for c in claimed if c.event_pk == pk]
        for sid, subs in (await active_matches(session, mk, ids)).items():
            found[(pk, sid)] = subs
    return found


def _failure(r: Resources, c: Claimed, exc: SendError, now: datetime) -> Outcome:
    error = str(exc)
    if exc.permanent:
        return Outcome(c, "failed", error, suppress=exc.suppresses)
    if (now - c.created_at).total_seconds() > r.settings.retry_give_up_after:
        return Outcome(c, "failed", f"gave up after {c.attempts} attempts: {error}")
    return Outcome(c, "retry", error)


def retry_delay(r: Resources, attempts: int) -> float:
    """The visible backoff ladder: settings.retry_ladder, its last step repeated."""
    ladder = r.settings.retry_ladder
    return ladder[min(max(attempts, 1) - 1, len(ladder) - 1)]


async def record(
    r: Resources, outcomes: list[Outcome], hashes: dict[int, str], still_sending: list[int]
) -> None:
    """Write outcomes in one transaction (and refresh the claim of rows not yet sent)."""
    if not outcomes and not still_sending:
        return
    now = utcnow()
    retries: dict[float, list[int]] = {}
    params: list[dict[str, Any]] = []
    for o in outcomes:
        row: dict[str, Any] = {
            "id": o.delivery.id,
            "status": o.status,
            "last_error": o.error,
            "message_id": o.message_id,
            "sent_at": now if o.status == "sent" else None,
            "next_attempt_at": now,
        }
        if o.status == "retry":
            delay = retry_delay(r, o.delivery.attempts)
            row.update(status="pending", next_attempt_at=now + timedelta(seconds=delay))
            retries.setdefault(delay, []).append(o.delivery.id)
        params.append(row)
    await until_written(r, lambda: _write(r, outcomes, params, hashes, still_sending, now))
    for o in outcomes:
        DELIVERIES.labels(o.status).inc()
    for delay, ids in retries.items():
        try:
            await r.redis.enqueue_job(
                "send_deliveries",
                ids,
                _job_id=r.job_id("retry", ids[0], f"{now.timestamp():.6f}"),
                _defer_by=delay + DEFER_MARGIN,
            )
        except (RedisError, OSError) as exc:
            log.warning("retry not enqueued (the sweep will): %s", exc)


async def _write(
    r: Resources,
    outcomes: list[Outcome],
    params: list[dict[str, Any]],
    hashes: dict[int, str],
    still_sending: list[int],
    now: datetime,
) -> None:
    """Idempotent (updates by primary key, suppression ON CONFLICT): safe to run again."""
    async with r.sessions.begin() as session:
        for o in outcomes:
            if o.suppress and o.delivery.subscriber_id in hashes:
                await queries.suppress(
                    session, hashes[o.delivery.subscriber_id], "hard_bounce", o.error
                )
        if params:
            await _update_outcomes(session, params)
        if still_sending:
            # The time of this attempt, not `now`: a write retried through a database outage
            # must not renew the claim with a time the sweep already holds for stale.
            await session.execute(
                update(Delivery)
                .where(Delivery.id.in_(still_sending), queries.delivery_status_is("sending"))
                .values(next_attempt_at=utcnow())
                .execution_options(synchronize_session=False)
            )


# PostgreSQL: the whole group as one UPDATE over arrays; an ORM bulk UPDATE (executemany) spends
# tens of microseconds per row in SQLAlchemy parameter processing, in the sending worker.
_PG_OUTCOMES = text(
    "UPDATE deliveries AS d SET status = v.status, last_error = v.last_error,"
    " message_id = v.message_id, sent_at = v.sent_at, next_attempt_at = v.next_attempt_at"
    " FROM unnest(CAST(:id AS BIGINT[]), CAST(:status AS TEXT[]), CAST(:last_error AS TEXT[]),"
    " CAST(:message_id AS TEXT[]), CAST(:sent_at AS TIMESTAMPTZ[]),"
    " CAST(:next_attempt_at AS TIMESTAMPTZ[]))"
    " AS v(id, status, last_error, message_id, sent_at, next_attempt_at)"
    " WHERE d.id = v.id"
)


async def _update_outcomes(session: AsyncSession, params: list[dict[str, Any]]) -> None:
    if queries.dialect_name(session) == "postgresql":
        columns = {name: [row[name] for row in params] for name in params[0]}
        await session.execute(_PG_OUTCOMES, columns)
    else:  # ORM bulk UPDATE by primary key: one executemany for the whole group
        await session.execute(update(Delivery), params)


def outage_key(r: Resources) -> str:
    return r.job_id("database-unreachable")


async def note_outage(r: Resources) -> None:
    """This process found PostgreSQL unreachable: every worker's sweep should know (Redis is
    usually up meanwhile), for NOTIFIER_SWEEP_STALE_AFTER after the last such report."""
    note_unreachable()
    with suppress(RedisError, OSError):
        await r.redis.set(outage_key(r), b"1", px=int(r.settings.sweep_stale_after * 1000))


async def outage_within_claim(r: Resources) -> bool:
    """Whether any worker found PostgreSQL unreachable within NOTIFIER_SWEEP_STALE_AFTER."""
    if unreachable_within(r.settings.sweep_stale_after):
        return True
    with suppress(RedisError, OSError):
        return bool(await r.redis.exists(outage_key(r)))
    return False


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
            await note_outage(r)
            log.warning("outcomes not yet recorded, retrying: %s", type(exc).__name__)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


class ClaimLapsed(Exception):
    """A batch's claim on its unsent rows may have been taken over by the sweep."""


async def deliver(
    r: Resources,
    outgoing: list[Outgoing],
    hashes: dict[int, str],
    renderers: dict[int, AlertRenderer],
    renewed: float,
) -> None:
    """Send over one SMTP connection at the configured rate, recording outcomes as it goes.

    `renewed` is when the rows' claim was written (time.monotonic()). A row is sent only while
    the claim is fresh, which flushes renew; a batch whose renewal was held up (PostgreSQL
    unreachable longer than most of NOTIFIER_SWEEP_STALE_AFTER) stops and leaves its unsent
    rows to the sweep rather than race the job the sweep may have given them to."""
    rate = SendRate(r)
    sender = sender_address(r.settings)
    queue = deque(outgoing)
    done: list[Outcome] = []
    last_flush = time.monotonic()
    lapse = r.settings.sweep_stale_after * CLAIM_LAPSE

    async def flush() -> None:
        """Record what was sent and refresh the claim of the rest (also while waiting for the
        send rate: a slow but live batch must never look dead to the sweep)."""
        nonlocal done, last_flush, renewed
        outcomes, done = owned(done), []
        started = time.monotonic()
        await record(r, outcomes, hashes, [i.delivery.id for i in queue])
        last_flush = time.monotonic()
        if not lapsed():
            renewed = started  # the refresh was written at or after `started`
        # Else the sweep may have taken the rows before the refresh landed: `renewed` stays old
        # and the batch stops before its next message.

    def lapsed() -> bool:
        return time.monotonic() - renewed >= lapse

    def owned(outcomes: list[Outcome]) -> list[Outcome]:
        """After the claim lapsed (a send or a reconnect that hung), the rows may be another
        job's: only what was sent is still ours to record; a retry or a failure written now
        could put a row another job has sent back to pending."""
        return [o for o in outcomes if o.status == "sent"] if lapsed() else outcomes

    reconnects = 0
    try:
        while queue:
            # A relay that drops one session (421, a reset) usually takes the next at once:
            # reconnect and go on; only the message in flight waits for its retry. A relay
            # that refuses the connection itself, or keeps dropping it, gets the whole rest
            # of the batch back on the retry ladder.
            try:
                async with r.mailer.connect() as conn:
                    while queue:
                        item = queue[0]
                        sent, data = render(r, renderers, item)
                        if data is None:
                            done.append(sent)
                            queue.popleft()
                            continue
                        await rate.acquire(heartbeat=flush, every=r.settings.sweep_stale_after / 3)
                        if lapsed():
                            raise ClaimLapsed(
                                f"claim of {len(queue)} unsent message(s) not renewed in time"
                            )
                        started = time.perf_counter()
                        try:
                            await conn.send(sender, item.email, data)
                        except ConnectionLost as exc:
                            done.append(_failure(r, item.delivery, exc, utcnow()))
                            queue.popleft()
                            raise
                        except SendError as exc:
                            done.append(_failure(r, item.delivery, exc, utcnow()))
                        else:
                            done.append(sent)
                            MAILS.labels("alert").inc()
                        finally:
                            SEND_SECONDS.observe(time.perf_counter() - started)
                        queue.popleft()
                        if time.monotonic() - last_flush >= FLUSH_SECONDS:
                            await flush()
            except ConnectionLost as exc:
                reconnects += 1
                if reconnects > MAX_RECONNECTS or not queue:
                    raise
                log.warning("SMTP session lost, reconnecting (%d): %s", reconnects, exc)
    except ClaimLapsed as exc:
        # Unsent rows stay as they are: claimed by this batch (the sweep hands them out once
        # stale) or already handed to another job. Either way, not sent from here.
        log.warning("%s: left to the sweep", exc)
    except ConnectionLost as exc:
        # Every message still queued: the relay is not taking connections, try again later.
        now = utcnow()
        done.extend(_failure(r, item.delivery, exc, now) for item in queue)
        log.warning("SMTP connection lost, %d message(s) will be retried: %s", len(queue), exc)
    finally:
        # Also on any other error: what was sent is recorded; the rest stays claimed for the sweep.
        await record(r, owned(done), hashes, [])


@register("send_deliveries")
async def send_deliveries(ctx: dict[str, Any], delivery_ids: list[int]) -> dict[str, int]:
    r = resources_of(ctx)
    claimed_at = time.monotonic()
    claimed = await claim(r, [int(i) for i in delivery_ids])
    if not claimed:
        return {"claimed": 0}
    outgoing, outcomes, hashes, renderers = await prepare(r, claimed)
    await record(r, outcomes, hashes, [])
    if outgoing:
        await deliver(r, outgoing, hashes, renderers, claimed_at)
    return {"claimed": len(claimed), "sent_or_tried": len(outgoing)}
