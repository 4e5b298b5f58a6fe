"""The sweep: re-enqueue slices, deliveries and events that waited too long, so a lost job, a
flushed Redis or a killed worker loses nothing (PostgreSQL is the truth; Redis only triggers)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import InstrumentedAttribute

from notifier.clock import utcnow
from notifier.data.db import transient_db_error
from notifier.data.models import Delivery, Event, FanoutSlice, Subscriber, Subscription
from notifier.data.states import OPEN_EVENT, DeliveryStatus, SliceStatus, SubscriptionStatus
from notifier.jobs.context import resources_of
from notifier.metrics import SWEEP_RECOVERED
from notifier.queue import enqueue_confirmation, enqueue_fanout, enqueue_sends, enqueue_slices
from notifier.resources import Resources

log = logging.getLogger("notifier.sweep")

# Rows per sweep transaction: a flushed Redis over a huge backlog stays bounded in memory.
SWEEP_CHUNK = 10_000


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Re-enqueue what waited longer than `sweep_stale_after` (see _sweep)."""
    r = resources_of(ctx)
    try:
        return await _sweep(r)
    except (DBAPIError, PoolTimeout, OSError) as exc:
        if transient_db_error(exc):
            await r.outage.note()
        raise


async def _sweep(r: Resources) -> dict[str, int]:
    """Re-enqueue deliveries, slices and events that waited longer than `sweep_stale_after`.

    Pending slices whose job was lost, and `sending` slices whose job died (queued_at holds the
    claim time, refreshed while the batch is in progress), go back to pending with a fresh
    queued_at and a fresh job. Pending rows whose job was lost, and `sending` rows whose worker
    died (the claim time is kept in next_attempt_at and refreshed while a batch is in
    progress), go back to pending with a fresh timestamp, so the next sweep leaves them alone
    while their new job waits in the queue.

    Not `sending` rows or slices for NOTIFIER_SWEEP_STALE_AFTER after any worker found the
    database unreachable (Resources.outage): no batch could renew its claim meanwhile, and a
    live one lands its outcomes within a second of the database's return. Taking its mails
    first would mail them again.
    """
    now = utcnow()
    stale_after = r.settings.sweep_stale_after
    cutoff = now - timedelta(seconds=stale_after)
    pending, sending = DeliveryStatus.PENDING, DeliveryStatus.SENDING
    outage = await r.outage.within_window()
    statuses = (pending,) if outage else (pending, sending)
    recovered = 0
    while True:
        where = (Delivery.status.in_(statuses), Delivery.next_attempt_at < cutoff)
        rows = await _take_stale(
            r,
            Delivery,
            where,
            {"status": DeliveryStatus.PENDING, "next_attempt_at": now},
            (Delivery.id, Delivery.event_pk),  # the partition key: an update by id finds its row
        )
        if rows:
            ids, event_pks = [row[0] for row in rows], [row[1] for row in rows]
            await enqueue_sends(r, ids, f"sweep:{int(now.timestamp())}", event_pks)
        recovered += len(rows)
        if len(rows) < SWEEP_CHUNK:
            break
    slices = await _sweep_slices(r, now, cutoff, outage)
    confirmations = await _sweep_confirmations(r, now, cutoff)
    async with r.sessions.begin() as session:
        events = list(
            await session.scalars(
                select(Event.id).where(Event.status.in_(OPEN_EVENT), Event.received_at < cutoff)
            )
        )
    for pk in events:
        # A fresh job id: the original may still sit in the queue behind a dead worker's claim.
        await enqueue_fanout(r, pk, int(now.timestamp()))
    if recovered:
        SWEEP_RECOVERED.inc(recovered)
    if recovered or slices or events or confirmations:
        log.info(
            "sweep re-enqueued %d deliveries, %d slices, %d events and %d confirmation mails",
            recovered,
            slices,
            len(events),
            confirmations,
        )
    return {
        "deliveries": recovered,
        "slices": slices,
        "events": len(events),
        "confirmations": confirmations,
    }


async def _sweep_confirmations(r: Resources, now: datetime, cutoff: datetime) -> int:
    """Confirmation jobs lost after their signup was answered (a Redis master that died before
    its last writes reached the replica, a flushed Redis): an address with a subscription
    still pending, requested before `cutoff` and after the last confirmation job that ran for
    it, gets the job again, once per request (the job id names the latest request). Requests
    older than a confirm link's lifetime are left: the person has moved on."""
    oldest = now - timedelta(seconds=r.settings.confirm_max_age)
    latest = func.max(Subscription.requested_at)
    async with r.sessions() as session:
        rows = (
            await session.execute(
                select(Subscription.subscriber_id, latest)
                .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                .where(
                    Subscription.status == SubscriptionStatus.PENDING,
                    Subscription.requested_at < cutoff,
                    Subscription.requested_at > oldest,
                    or_(
                        Subscriber.confirm_job_at.is_(None),
                        Subscriber.confirm_job_at < Subscription.requested_at,
                    ),
                )
                .group_by(Subscription.subscriber_id)
                .order_by(Subscription.subscriber_id)
                .limit(SWEEP_CHUNK)
            )
        ).all()
    for subscriber_id, requested_at in rows:
        stamp = int(requested_at.timestamp() * 1000)
        await enqueue_confirmation(r, subscriber_id, r.job_id("confirm", subscriber_id, stamp))
    return len(rows)


async def _sweep_slices(r: Resources, now: datetime, cutoff: datetime, outage: bool) -> int:
    """Slices pending, or sending (not just after a database outage), since before `cutoff`:
    pending again with a fresh queued_at, a fresh job each."""
    statuses = [SliceStatus.PENDING] if outage else [SliceStatus.PENDING, SliceStatus.SENDING]
    values = {"queued_at": now, "status": SliceStatus.PENDING}
    count = 0
    while True:
        where = (FanoutSlice.status.in_(statuses), FanoutSlice.queued_at < cutoff)
        ids = [row[0] for row in await _take_stale(r, FanoutSlice, where, values)]
        await enqueue_slices(r, ids, int(now.timestamp()))
        count += len(ids)
        if len(ids) < SWEEP_CHUNK:
            return count


async def _take_stale(
    r: Resources,
    model: type[Delivery] | type[FanoutSlice],
    where: tuple[ColumnElement[bool], ...],
    values: dict[str, Any],
    keys: tuple[InstrumentedAttribute[int], ...] = (),
) -> list[tuple[int, ...]]:
    """Up to SWEEP_CHUNK rows of `model` matching `where`, given `values` in one transaction:
    their `keys` (default: the id), in id order. Rows a job is writing right now are not
    stale: skipped, never waited for."""
    keys = keys or (model.id,)
    async with r.sessions.begin() as session:
        stale = (
            select(*keys)
            .where(*where)
            .order_by(model.id)
            .limit(SWEEP_CHUNK)
            .with_for_update(skip_locked=True)
        )
        taken = await session.execute(
            update(model)
            .where(tuple_(*keys).in_(stale))
            .values(**values)
            .returning(*keys)
            .execution_options(synchronize_session=False)
        )
        return sorted(tuple(row) for row in taken)
