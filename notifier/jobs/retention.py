"""Retention (the worker's hourly retention_cron): delivery rows of events finished longer than
NOTIFIER_DELIVERY_RETENTION_DAYS become per-event counts, then event payloads go after their
own period; old study record versions go daily (study_versions_cron). Nothing an event still
needs is touched: not a row of an event that is fanning out, not a row pending, sending or held
for a digest."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, delete, exists, func, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.data import partitions
from notifier.data.models import Delivery, Event, FanoutSlice
from notifier.data.states import LIVE_DELIVERY, OPEN_EVENT, OPEN_SLICE
from notifier.data.study_tables import Study, StudyVersion
from notifier.jobs.context import resources_of
from notifier.resources import Resources

log = logging.getLogger("notifier.retention")

ROLL_EVERY = 86400.0  # PostgreSQL: a new deliveries partition a day (when events came)
DELETE_BATCH = 5000  # rows per transaction (SQLite's rows, study versions): short write locks
EVENT_BATCH = 1000  # events marked compacted, or payloads cut, per transaction
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for lock_timeout

# Counts of the rows about to be deleted, added to what retention counted before (SQLite).
_COUNT_ROWS = text(
    "INSERT INTO event_delivery_counts (event_pk, status, count)"
    " SELECT event_pk, status, count(*) FROM deliveries WHERE id IN :ids"
    " GROUP BY event_pk, status ON CONFLICT (event_pk, status)"
    " DO UPDATE SET count = event_delivery_counts.count + excluded.count"
).bindparams(bindparam("ids", expanding=True))


async def retention(ctx: dict[str, Any]) -> dict[str, int]:
    return await run_retention(resources_of(ctx))


async def run_retention(r: Resources, now: datetime | None = None) -> dict[str, int]:
    """One pass of everything; each part in short transactions of its own (`now`: the
    simulated time of bench/retention.py)."""
    now = now or utcnow()
    settings = r.settings
    done: dict[str, int] = {}
    postgres = r.engine.dialect.name == "postgresql"
    if postgres:
        async with r.sessions.begin() as session:
            rolled = await _locked(partitions.roll(session, now, ROLL_EVERY))
        if rolled:
            log.info(
                "deliveries: new partition %s for events from id %d", rolled.name, rolled.lower
            )
    if settings.delivery_retention_days:
        cutoff = now - timedelta(days=settings.delivery_retention_days)
        compact = _drop_partitions if postgres else _delete_rows
        done["events_compacted"] = await compact(r, cutoff, now)
    if settings.event_payload_retention_days:
        cutoff = now - timedelta(days=settings.event_payload_retention_days)
        done["payloads_purged"] = await _purge_payloads(r, cutoff, now)
    if any(done.values()):
        log.info("retention: %s", ", ".join(f"{k} {v}" for k, v in done.items()))
    return done


async def _locked(work: Any) -> Any:
    """`work`'s result, or None when it gave up waiting for a lock (the next run tries again)."""
    try:
        return await work
    except DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) != LOCK_NOT_AVAILABLE:
            raise
        log.warning("retention: deliveries busy (lock timeout); next run")
        return None


async def _drop_partitions(r: Resources, cutoff: datetime, now: datetime) -> int:
    """PostgreSQL: drop each partition (never the newest) whose events all finished before
    `cutoff` and whose rows are all final; the events it held, marked compacted."""
    async with r.sessions() as session:
        found = await partitions.partitions(session)
    compacted = 0
    for part in found[:-1]:
        async with r.sessions() as session:
            reason = await partitions.droppable(session, part, cutoff)
            if reason is not None:
                if reason.startswith("rows"):  # its events are old enough: say why it stays
                    log.warning("deliveries partition %s kept: %s", part.name, reason)
                continue
            events = await session.scalar(
                select(func.count()).select_from(Event).where(*part.holds())
            )
        async with r.sessions.begin() as session:
            dropped = await _locked(partitions.drop(session, part, cutoff, now))
        if dropped:
            compacted += int(events or 0)
            log.info("deliveries partition %s dropped (%d events)", part.name, events or 0)
    return compacted


async def in_batches(
    r: Resources,
    due: Select[int],
    batch: int,
    act: Callable[[AsyncSession, list[int]], Awaitable[Any]],
) -> int:
    """Until `due` (ids) finds none: `act` on `batch` of them at a time, one transaction each
    (short write locks); how many in all."""
    done = 0
    while True:
        async with r.sessions.begin() as session:
            ids = list(await session.scalars(due.limit(batch)))
            if ids:
                await act(session, ids)
        done += len(ids)
        if len(ids) < batch:
            return done


async def _delete_rows(r: Resources, cutoff: datetime, now: datetime) -> int:
    """SQLite: mark the finished events compacted, then delete their rows DELETE_BATCH at a
    time, each batch's counts added in the transaction that deletes it; then their slices."""
    live = exists().where(Delivery.event_pk == Event.id, Delivery.status.in_(LIVE_DELIVERY))
    unsent = exists().where(FanoutSlice.event_pk == Event.id, FanoutSlice.status.in_(OPEN_SLICE))
    due = select(Event.id).where(
        Event.compacted_at.is_(None),
        Event.status.not_in(OPEN_EVENT),
        Event.fanned_out_at < cutoff,
        ~live,
        ~unsent,
    )

    async def mark(session: AsyncSession, ids: list[int]) -> None:
        await session.execute(
            update(Event)
            .where(Event.id.in_(ids), Event.compacted_at.is_(None))
            .values(compacted_at=now)
            .execution_options(synchronize_session=False)
        )

    async def count_and_delete(session: AsyncSession, ids: list[int]) -> None:
        await session.execute(_COUNT_ROWS, {"ids": ids})
        await session.execute(delete(Delivery).where(Delivery.id.in_(ids)))

    async def delete_slices(session: AsyncSession, ids: list[int]) -> None:
        await session.execute(delete(FanoutSlice).where(FanoutSlice.id.in_(ids)))

    compacted = await in_batches(r, due, EVENT_BATCH, mark)
    for model, act in ((Delivery, count_and_delete), (FanoutSlice, delete_slices)):
        # The rows, then the fan-out slices (all done: the events are finished).
        of_compacted = (
            select(model.id)
            .join(Event, Event.id == model.event_pk)
            .where(Event.compacted_at.is_not(None))
        )
        await in_batches(r, of_compacted, DELETE_BATCH, act)
    return compacted


async def _purge_payloads(r: Resources, cutoff: datetime, now: datetime) -> int:
    """Payloads of compacted events finished before `cutoff`, cut to {} (the event row stays:
    its event_id keeps a re-sent event from being fanned out again)."""
    due = select(Event.id).where(
        Event.compacted_at.is_not(None),
        Event.payload_purged_at.is_(None),
        Event.fanned_out_at < cutoff,
    )

    async def cut(session: AsyncSession, ids: list[int]) -> None:
        await session.execute(
            update(Event)
            .where(Event.id.in_(ids))
            .values(payload={}, payload_purged_at=now)
            .execution_options(synchronize_session=False)
        )

    return await in_batches(r, due, EVENT_BATCH, cut)


async def purge_study_versions(ctx: dict[str, Any]) -> int:
    """The daily study_versions_cron: record versions stored more than
    NOTIFIER_STUDY_VERSION_RETENTION_DAYS ago, except each study's latest (the next record is
    diffed against it); how many went."""
    r = resources_of(ctx)
    days = r.settings.study_version_retention_days
    if not days:
        return 0
    deleted = await old_study_versions(r, utcnow() - timedelta(days=days))
    if deleted:
        log.info("retention: %d study record versions deleted", deleted)
    return deleted


async def old_study_versions(r: Resources, cutoff: datetime) -> int:
    """One pass along (stored_at, id) over the versions stored before `cutoff`, DELETE_BATCH at
    a time: a study's latest version stays in that range for good (most of the registry, once
    it is older than the cutoff), so each batch starts where the last one ended rather than
    reading those again."""
    latest = select(Study.versions).where(Study.nct_id == StudyVersion.nct_id).scalar_subquery()
    after: tuple[datetime, int] | None = None
    deleted = 0
    while True:
        page = select(StudyVersion.stored_at, StudyVersion.id, StudyVersion.seq < latest).where(
            StudyVersion.stored_at < cutoff
        )
        if after is not None:
            page = page.where(tuple_(StudyVersion.stored_at, StudyVersion.id) > after)
        async with r.sessions.begin() as session:
            rows = (
                await session.execute(
                    page.order_by(StudyVersion.stored_at, StudyVersion.id).limit(DELETE_BATCH)
                )
            ).all()
            superseded = [row[1] for row in rows if row[2]]
            if superseded:
                await session.execute(delete(StudyVersion).where(StudyVersion.id.in_(superseded)))
        deleted += len(superseded)
        if len(rows) < DELETE_BATCH:
            return deleted
        after = (rows[-1][0], rows[-1][1])
