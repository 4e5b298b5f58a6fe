"""arq jobs that turn a stored event into delivery rows and send jobs, and the sweep behind them.

PostgreSQL is the source of truth and Redis only triggers work: delivery rows (unique per event
and subscriber) are committed before any send job exists, and the sweep re-enqueues whatever
waits too long, so a lost job, a flushed Redis or a killed worker loses nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.alerts import is_material
from notifier.clock import utcnow
from notifier.matching import match_keys, matching_page
from notifier.metrics import SWEEP_RECOVERED
from notifier.models import Delivery, Event, UTCDateTime
from notifier.queries import dialect_name, insert_for
from notifier.resources import Resources
from notifier.settings import Settings
from notifier.worker import every, register, register_cron, resources_of

log = logging.getLogger("notifier.fanout")

OPEN_EVENT = ("received", "fanning_out")
# Rows per sweep transaction: a flushed Redis over a huge backlog stays bounded in memory.
SWEEP_CHUNK = 10_000


# A send batch should end well within arq's job timeout (600 s, notifier.worker): a batch cut off
# in the middle of a DATA may send that message again after the sweep.
BATCH_SECONDS = 120


def batch_size(settings: Settings) -> int:
    """NOTIFIER_SEND_BATCH_SIZE, smaller under a low NOTIFIER_SEND_RATE: the worker's batches
    share the rate, so 500 messages at 5/s over 8 concurrent batches would take 800 s."""
    size = settings.send_batch_size
    if settings.send_rate > 0:
        share = settings.send_rate / settings.worker_max_jobs
        size = min(size, max(1, int(share * BATCH_SECONDS)))
    return size


async def enqueue_sends(r: Resources, delivery_ids: list[int], job_prefix: str) -> None:
    """One send job per batch_size() ids, with ids that make a re-run enqueue nothing new."""
    size = batch_size(r.settings)
    for start in range(0, len(delivery_ids), size):
        chunk = delivery_ids[start : start + size]
        await r.redis.enqueue_job("send_deliveries", chunk, _job_id=r.job_id(job_prefix, chunk[0]))


# PostgreSQL: the page's ids as one array parameter. Each row of an executemany costs ~40 µs of
# SQLAlchemy parameter processing in the worker (cProfile of bench/fanout_scheduling).
_PG_INSERT = text(
    "INSERT INTO deliveries"
    " (event_pk, subscriber_id, status, attempts, next_attempt_at, created_at)"
    " SELECT :event_pk, sid, 'pending', 0, :now, :now"
    " FROM unnest(CAST(:ids AS BIGINT[])) AS sid"
    " ON CONFLICT (event_pk, subscriber_id) DO NOTHING RETURNING id"
).bindparams(bindparam("now", type_=UTCDateTime()))


async def insert_deliveries(
    session: AsyncSession, event_pk: int, subscriber_ids: list[int]
) -> list[int]:
    """One pending row per subscriber (none for one that has it already): the new rows' ids."""
    now = utcnow()
    if dialect_name(session) == "postgresql":
        params = {"event_pk": event_pk, "ids": subscriber_ids, "now": now}
        return sorted((await session.scalars(_PG_INSERT, params)).all())
    rows = [
        {
            "event_pk": event_pk,
            "subscriber_id": sid,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for sid in subscriber_ids
    ]
    stmt = (
        insert_for(session, Delivery)
        .on_conflict_do_nothing(index_elements=["event_pk", "subscriber_id"])
        .returning(Delivery.id)
    )
    # executemany: SQLAlchemy's "insertmanyvalues" sends a few cached multi-row statements
    # within the driver's parameter limit; a .values(rows) statement is compiled afresh each
    # page and costs ~5x as much (measured, docs/PERFORMANCE.md).
    return sorted((await session.scalars(stmt, rows)).all())


@register("fanout_event")
async def fanout_event(ctx: dict[str, Any], event_pk: int) -> dict[str, Any]:
    """Walk the matching subscribers page by page from the event's cursor; idempotent."""
    r = resources_of(ctx)
    async with r.sessions.begin() as session:
        event = await session.get(Event, event_pk)
    if event is None or event.status not in OPEN_EVENT:
        return {"event_pk": event_pk, "status": event.status if event else "missing"}
    if not is_material(event.payload):
        async with r.sessions.begin() as session:
            await session.execute(
                update(Event)
                .where(Event.id == event_pk, Event.status.in_(OPEN_EVENT))
                .values(status="immaterial", fanned_out_at=utcnow())
            )
        return {"event_pk": event_pk, "status": "immaterial"}
    mk = match_keys(event.payload)
    page_size = r.settings.fanout_page_size
    created = 0
    exhausted: set[int] = set()  # match ranges with nothing left (matching_page)
    written: int | None = None  # the cursor this run last stored
    while True:
        async with r.sessions.begin() as session:
            # The UPDATE comes first: it locks the event row, so two runs of this job (a retry, a
            # sweep) take turns page by page instead of walking the same page together.
            cursor = await session.scalar(
                update(Event)
                .where(Event.id == event_pk, Event.status.in_(OPEN_EVENT))
                .values(status="fanning_out")
                .returning(Event.fanout_cursor)
            )
            if cursor is None:
                break  # another run finished it
            if cursor != written:
                # Another run (a replay, a sweep's re-run) moved the cursor: what this run found
                # exhausted may hold subscribers behind the new cursor. Start the ranges afresh.
                exhausted.clear()
            # The first page is one send batch, so the first mails go out while the rest of
            # the audience is still being paged.
            limit = page_size if cursor else min(page_size, batch_size(r.settings))
            subscriber_ids = await matching_page(session, mk, cursor, limit, exhausted)
            new_ids: list[int] = []
            if subscriber_ids:
                new_ids = await insert_deliveries(session, event_pk, subscriber_ids)
            done = len(subscriber_ids) < limit
            values: dict[str, Any] = {"matched": Event.matched + len(new_ids)}
            if subscriber_ids:
                values["fanout_cursor"] = written = subscriber_ids[-1]
            if done:
                values.update(status="fanned_out", fanned_out_at=utcnow())
            await session.execute(update(Event).where(Event.id == event_pk).values(**values))
        # After commit: a crash between commit and enqueue leaves pending rows for the sweep.
        await enqueue_sends(r, new_ids, f"send:{event_pk}")
        created += len(new_ids)
        if done:
            break
    return {"event_pk": event_pk, "deliveries": created}


@register("sweep")
async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Re-enqueue deliveries and events that waited longer than `sweep_stale_after`.

    Pending rows whose job was lost, and `sending` rows whose worker died (the claim time is kept
    in next_attempt_at and refreshed while a batch is in progress), go back to pending with a
    fresh timestamp, so the next sweep leaves them alone while their new job waits in the queue.
    """
    r = resources_of(ctx)
    now = utcnow()
    cutoff = now - timedelta(seconds=r.settings.sweep_stale_after)
    recovered = 0
    while True:
        async with r.sessions.begin() as session:
            stale = (
                select(Delivery.id)
                .where(
                    Delivery.status.in_(("pending", "sending")), Delivery.next_attempt_at < cutoff
                )
                .order_by(Delivery.id)
                .limit(SWEEP_CHUNK)
                # Rows a send job is writing right now are not stale: skip them, never deadlock.
                .with_for_update(skip_locked=True)
            )
            ids = sorted(
                (
                    await session.scalars(
                        update(Delivery)
                        .where(Delivery.id.in_(stale.scalar_subquery()))
                        .values(status="pending", next_attempt_at=now)
                        .returning(Delivery.id)
                        .execution_options(synchronize_session=False)
                    )
                ).all()
            )
        if not ids:
            break
        await enqueue_sends(r, ids, f"sweep:{int(now.timestamp())}")
        recovered += len(ids)
        if len(ids) < SWEEP_CHUNK:
            break
    async with r.sessions.begin() as session:
        events = list(
            await session.scalars(
                select(Event.id).where(Event.status.in_(OPEN_EVENT), Event.received_at < cutoff)
            )
        )
    for pk in events:
        # A fresh job id: the original may still sit in the queue behind a dead worker's claim.
        await r.redis.enqueue_job(
            "fanout_event", pk, _job_id=r.job_id("fanout", pk, int(now.timestamp()))
        )
    if recovered:
        SWEEP_RECOVERED.inc(recovered)
    if recovered or events:
        log.info("sweep re-enqueued %d deliveries and %d events", recovered, len(events))
    return {"deliveries": recovered, "events": len(events)}


# Every NOTIFIER_SWEEP_INTERVAL seconds (once a minute by default).
register_cron("sweep_cron", schedule_from=lambda s: every(s.sweep_interval), second={0})(sweep)
