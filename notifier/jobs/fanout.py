"""arq jobs that turn a stored event into fan-out slices, and a slice into its send batch.

PostgreSQL is the source of truth and Redis only triggers work. The fan-out walks the matching
subscribers and commits one slice row per send batch (a run of subscriber ids) before that
batch's job exists; the slice's job takes the slice (pending -> sending: the claim), reads who
matches in the run now, mails them and writes each mail's delivery row (unique per event and
subscriber) once, with its outcome, marking the slice done with the last. A job killed in
between leaves the slice `sending`: the sweep (jobs.sweep) hands it out again once stale, and
the next run sends to whoever has no row yet, after recording as sent those the relay had
accepted (receipts). The sweep re-enqueues whatever waits too long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core.concepts import study_terms
from notifier.core.matching import (
    Matched,
    MatchKeys,
    active_matches_between,
    match_keys,
    matching_page,
)
from notifier.data.models import Delivery, Event, FanoutSlice, UTCDateTime
from notifier.data.queries import dialect_name, insert_for
from notifier.data.states import OPEN_EVENT, OPEN_SLICE, DeliveryStatus, EventStatus, SliceStatus
from notifier.jobs.context import resources_of
from notifier.jobs.outcomes import CLAIMED_COLUMNS, Claimed, SliceClaim
from notifier.jobs.sending import send_claimed
from notifier.mail.summaries import is_material
from notifier.metrics import UNSUPPORTED_MESH
from notifier.queue import batch_size, enqueue_slices
from notifier.resources import Resources

log = logging.getLogger("notifier.fanout")

# PostgreSQL: the page's ids as one array parameter. Each row of an executemany costs ~40 µs of
# SQLAlchemy parameter processing in the worker (cProfile of bench/fanout_scheduling).
_PG_INSERT = text(
    "INSERT INTO deliveries"
    " (event_pk, subscriber_id, status, attempts, next_attempt_at, created_at)"
    " SELECT :event_pk, sid, :status, :attempts, :now, :now"
    " FROM unnest(CAST(:ids AS BIGINT[])) AS sid"
    " ON CONFLICT (event_pk, subscriber_id) DO NOTHING"
    " RETURNING id, event_pk, subscriber_id, attempts, created_at"  # CLAIMED_COLUMNS
).bindparams(bindparam("now", type_=UTCDateTime()))


async def insert_deliveries(
    session: AsyncSession, event_pk: int, subscriber_ids: list[int]
) -> list[Claimed]:
    """One pending row per subscriber (none for one that has it already): the new rows, by id
    (materialise: rows for another job to send)."""
    now = utcnow()
    status, attempts = DeliveryStatus.PENDING, 0
    if dialect_name(session) == "postgresql":
        params = {
            "event_pk": event_pk,
            "ids": subscriber_ids,
            "now": now,
            "status": status.value,
            "attempts": attempts,
        }
        found = await session.execute(_PG_INSERT, params)
    else:
        rows = [
            {
                "event_pk": event_pk,
                "subscriber_id": sid,
                "status": status,
                "attempts": attempts,
                "next_attempt_at": now,
                "created_at": now,
            }
            for sid in subscriber_ids
        ]
        stmt = (
            insert_for(session, Delivery)
            .on_conflict_do_nothing(index_elements=["event_pk", "subscriber_id"])
            .returning(*CLAIMED_COLUMNS)
        )
        # executemany: SQLAlchemy's "insertmanyvalues" sends a few cached multi-row statements
        # within the driver's parameter limit; a .values(rows) statement is compiled afresh
        # each page and costs ~5x as much (measured, docs/PERFORMANCE.md).
        found = await session.execute(stmt, rows)
    return sorted((Claimed(*row) for row in found), key=lambda c: c.id)


async def write_slices(
    session: AsyncSession, event_pk: int, cursor: int, subscriber_ids: list[int], size: int
) -> list[int]:
    """A page of matching subscriber ids (ordered, all above `cursor`) as slices of `size`: the
    first starts after `cursor`, each next one after the last id of the one before."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    after = cursor
    for start in range(0, len(subscriber_ids), size):
        chunk = subscriber_ids[start : start + size]
        rows.append(
            {
                "event_pk": event_pk,
                "after_id": after,
                "last_id": chunk[-1],
                "size": len(chunk),
                "status": DeliveryStatus.PENDING,
                "queued_at": now,
            }
        )
        after = chunk[-1]
    return sorted(await session.scalars(insert(FanoutSlice).returning(FanoutSlice.id), rows))


@dataclass(frozen=True)
class _Taken:
    """A slice as its take returned it."""

    event_pk: int
    after_id: int
    last_id: int
    runs: int


async def _take(session: AsyncSession, slice_id: int, values: dict[str, Any]) -> _Taken | None:
    """pending -> `values` for this slice (the UPDATE locks it: a twin job waits, then finds
    it taken): its event, run of ids and runs; None when it is not pending."""
    row = (
        await session.execute(
            update(FanoutSlice)
            .where(FanoutSlice.id == slice_id, FanoutSlice.status == SliceStatus.PENDING)
            .values(**values)
            .returning(
                FanoutSlice.event_pk,
                FanoutSlice.after_id,
                FanoutSlice.last_id,
                FanoutSlice.runs,
            )
            .execution_options(synchronize_session=False)
        )
    ).first()
    return None if row is None else _Taken(*row)


async def slice_matches(session: AsyncSession, taken: _Taken) -> dict[int, list[Matched]]:
    """Who matches in a taken slice's run now, and with which subscriptions: read when the
    slice is sent, so who unsubscribed meanwhile gets no row and who confirmed meanwhile gets
    one; the send batch takes these as its re-check (jobs/outcomes.prepare)."""
    # The event is there: deleting it would have cascaded to the slice the take locked.
    payload = (
        await session.execute(select(Event.payload).where(Event.id == taken.event_pk))
    ).scalar_one()
    return await active_matches_between(session, match_keys(payload), taken.after_id, taken.last_id)


async def materialise(r: Resources, slice_id: int) -> list[int] | None:
    """Write a pending slice's delivery rows (pending) and mark it done, in one transaction:
    the new rows' ids, or None when another run did it already. Rows that exist (a replay)
    are left alone. Not the send path (send_slice): rows for another job to send."""
    async with r.sessions.begin() as session:
        taken = await _take(session, slice_id, {"status": SliceStatus.DONE})
        if taken is None:
            return None
        members = list(await slice_matches(session, taken))
        if not members:
            return []
        return [c.id for c in await insert_deliveries(session, taken.event_pk, members)]


class _Busy(Exception):
    """An older slice over some of the same subscribers (the walk's, when a replay wrote this
    one) still has mails to send: this one waits for it."""


# A slice waiting for an overlapping one to finish looks again this often, this many times,
# then leaves itself pending for the sweep.
BUSY_WAIT = 0.5
BUSY_TRIES = 60


class TakenSlice(NamedTuple):
    """A slice taken by its send job: the claim, its mails (Claimed without a row yet) and
    what each recipient matches with, read in the take's transaction."""

    claim: SliceClaim
    mails: list[Claimed]
    matches: dict[int, list[Matched]]


async def take_slice(r: Resources, slice_id: int) -> TakenSlice | None:
    """Take a pending slice for this job (sending, queued_at the claim time, one more run) and
    read who matches in its run now, less who has a row for the event already (an earlier run
    of the slice recorded them, or a replay found them mailed): their mails, to send. None
    when another job has it or it is done.

    A mail of a slice's second run or later counts as a second attempt, so its receipt is read
    first (jobs/receipts.py): the run before may have mailed it and died before its row.

    Raises _Busy (nothing taken) while an older slice of the event over some of the same
    subscribers is pending or sending: the walk's slices never overlap, a replay's overlap the
    walk's before it, and two slices sent side by side would each find the other's mails
    without rows. The older one never waits for the newer: no two wait for each other."""
    now = utcnow()
    async with r.sessions.begin() as session:
        claim = {"status": SliceStatus.SENDING, "queued_at": now, "runs": FanoutSlice.runs + 1}
        taken = await _take(session, slice_id, claim)
        if taken is None:
            return None
        overlapping = await session.scalar(
            select(FanoutSlice.id)
            .where(
                FanoutSlice.event_pk == taken.event_pk,
                FanoutSlice.id < slice_id,
                FanoutSlice.status.in_(OPEN_SLICE),
                FanoutSlice.after_id < taken.last_id,
                FanoutSlice.last_id > taken.after_id,
            )
            .limit(1)
        )
        if overlapping is not None:
            raise _Busy  # rolls the take back: still pending
        matches = await slice_matches(session, taken)
        members = list(matches)
        if members:
            have = set(
                await session.scalars(
                    select(Delivery.subscriber_id).where(
                        Delivery.event_pk == taken.event_pk,
                        Delivery.subscriber_id > taken.after_id,
                        Delivery.subscriber_id <= taken.last_id,
                    )
                )
            )
            members = [sid for sid in members if sid not in have]
    mails = [Claimed(0, taken.event_pk, sid, taken.runs, now) for sid in members]
    return TakenSlice(SliceClaim(slice_id, taken.event_pk, taken.runs), mails, matches)


async def send_slice(ctx: dict[str, Any], slice_id: int) -> dict[str, int]:
    """One slice: taken by this job, its mails sent as one batch, each mail's row written with
    its outcome (a crash leaves the slice `sending`: the sweep hands it out once stale)."""
    r = resources_of(ctx)
    for _ in range(BUSY_TRIES):
        claimed_at = time.monotonic()  # no later than the slice's claim time
        try:
            taken = await take_slice(r, int(slice_id))
            break
        except _Busy:
            await asyncio.sleep(BUSY_WAIT)
    else:
        log.info("slice %s: an overlapping slice is still being sent; left to the sweep", slice_id)
        return {"claimed": 0}
    if taken is None:
        return {"claimed": 0}
    return await send_claimed(r, taken.mails, claimed_at, taken.claim, taken.matches)


def note_unsupported_mesh(event_id: str, payload: dict[str, Any]) -> None:
    """Count and log (one line per event) the record's MeSH terms its own words do not support:
    they never make a match (an eye study indexed as Neoplasm Metastasis)."""
    mk = match_keys(payload)
    if mk.condition_kind is None:
        return
    distrusted = study_terms(payload.get("study") or {}).distrusted
    if distrusted:
        UNSUPPORTED_MESH.inc(len(distrusted))
        terms = "; ".join(f"{d['id']} {d['term']}" for d in distrusted)
        log.info(
            "event %s (%s): MeSH not supported by the study's words, ignored: %s",
            event_id,
            payload.get("nct_id"),
            terms,
        )


@dataclass
class _Walk:
    """One run of fanout_event through an event's audience."""

    mk: MatchKeys
    exhausted: set[int] = field(default_factory=set)  # ranges with nothing left (matching_page)
    written: int | None = None  # the cursor this run last stored


async def _next_page(
    r: Resources, event_pk: int, walk: _Walk
) -> tuple[list[int], int, bool] | None:
    """Commit the next page's slices with the event's cursor: (slice ids, subscribers found,
    whether it was the last page), or None when another run finished the event."""
    size = batch_size(r.settings)
    async with r.sessions.begin() as session:
        # The UPDATE comes first: it locks the event row, so two runs of this job (a retry, a
        # sweep) take turns page by page instead of walking the same page together.
        cursor = await session.scalar(
            update(Event)
            .where(Event.id == event_pk, Event.status.in_(OPEN_EVENT))
            .values(status=EventStatus.FANNING_OUT)
            .returning(Event.fanout_cursor)
        )
        if cursor is None:
            return None
        if cursor != walk.written:
            # Another run (a replay, a sweep's re-run) moved the cursor: what this run found
            # exhausted may hold subscribers behind the new cursor. Start the ranges afresh.
            walk.exhausted.clear()
        # The first page is one send batch, so the first mails go out while the rest of the
        # audience is still being paged.
        limit = r.settings.fanout_page_size if cursor else min(r.settings.fanout_page_size, size)
        subscriber_ids = await matching_page(session, walk.mk, cursor, limit, walk.exhausted)
        slice_ids: list[int] = []
        if subscriber_ids:
            slice_ids = await write_slices(session, event_pk, cursor, subscriber_ids, size)
        done = len(subscriber_ids) < limit
        values: dict[str, Any] = {"matched": Event.matched + len(subscriber_ids)}
        if subscriber_ids:
            values["fanout_cursor"] = walk.written = subscriber_ids[-1]
        if done:
            values.update(status=EventStatus.FANNED_OUT, fanned_out_at=utcnow())
        await session.execute(update(Event).where(Event.id == event_pk).values(**values))
    return slice_ids, len(subscriber_ids), done


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
                .values(status=EventStatus.IMMATERIAL, fanned_out_at=utcnow())
            )
        log.info(
            "event %s (%s, %s): nothing a reader cares about changed, no mail",
            event.event_id,
            event.nct_id,
            event.change_kind,
        )
        return {"event_pk": event_pk, "status": "immaterial"}
    note_unsupported_mesh(event.event_id, event.payload)
    walk = _Walk(match_keys(event.payload))
    recipients = batches = 0
    enqueuing: asyncio.Task[None] | None = None  # the previous page's jobs
    try:
        while (page := await _next_page(r, event_pk, walk)) is not None:
            slice_ids, found, done = page
            # After commit: a crash between commit and enqueue leaves pending slices for the
            # sweep. Queued while the next page is read (one page's jobs at a time, in order).
            if enqueuing is not None:
                await enqueuing
            enqueuing = asyncio.create_task(enqueue_slices(r, slice_ids))
            recipients += found
            batches += len(slice_ids)
            if done:
                break
    except BaseException:
        if enqueuing is not None:
            # Let the last page's jobs go out, without hiding the error that stopped the walk
            # (what they fail to enqueue waits for the sweep).
            with suppress(Exception):
                await enqueuing
        raise
    if enqueuing is not None:
        await enqueuing
    log.info(
        "event %s (%s, %s) fanned out: %d recipient(s) in %d send batch(es)",
        event.event_id,
        event.nct_id,
        event.change_kind,
        recipients,
        batches,
    )
    return {"event_pk": event_pk, "recipients": recipients}
