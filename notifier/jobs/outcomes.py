"""Delivery rows through a send batch: claim them, re-check each against subscriptions and
suppressions, render it, and record what happened (retries along the ladder).

A slice's batch (jobs/fanout.py) has no rows yet: the slice row is its claim, and `record`
writes each mail's row once, with its outcome (SliceClaim), instead of updating a row written
before the send: the UPDATE was half of PostgreSQL's work a mail (a non-HOT update: `status`
is indexed, so every index gets the row's new version; docs/PERFORMANCE.md)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core.matching import Matched, MatchKeys, active_matches, match_keys
from notifier.data import queries
from notifier.data.models import Delivery, Event, FanoutSlice, Subscriber
from notifier.data.states import DIGEST_FREQUENCIES, DeliveryStatus, SliceStatus
from notifier.jobs.retry import DEFER_MARGIN, retry_delay, until_written
from notifier.mail.alerts import AlertRenderer
from notifier.mail.message import message_id
from notifier.mailer import SendError
from notifier.metrics import DELIVERIES
from notifier.queue import enqueue_retry
from notifier.resources import Resources

log = logging.getLogger("notifier.sending")


@dataclass(frozen=True)
class Claimed:
    id: int  # 0: a slice's mail, its row not written yet
    event_pk: int
    subscriber_id: int
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class SliceClaim:
    """A fan-out slice taken by its send job (status `sending`, queued_at the claim time): the
    batch writes its mails' rows as their outcomes come, renews the claim with each write and
    marks the slice done with the last."""

    id: int
    event_pk: int
    run: int  # the slice's `runs` when this job took it: another run's claim is not ours


# A row as claim() and insert_deliveries (materialise) return it: Claimed's fields, in order.
CLAIMED_COLUMNS = (
    Delivery.id,
    Delivery.event_pk,
    Delivery.subscriber_id,
    Delivery.attempts,
    Delivery.created_at,
)


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
    sent_at: datetime | None = None  # when accepted, if known before it is recorded (receipts)

    def __post_init__(self) -> None:
        # Cut to the columns' width here, once: a longer text would fail the whole batch's
        # outcome UPDATE and leave its sent rows for the sweep to mail again.
        if self.error is not None and len(self.error) > ERROR_MAX:
            object.__setattr__(self, "error", self.error[:ERROR_MAX])


async def claim(r: Resources, ids: list[int], event_pks: list[int] | None = None) -> list[Claimed]:
    """pending -> sending, atomically: two workers given the same ids never both get a row.

    `event_pks` (the rows' events, when the caller knows them) lets PostgreSQL look in their
    partitions only: by id alone it probes every partition's index (15.6 ms against 0.5 ms for
    500 ids over 35 partitions, EXPLAIN ANALYZE)."""
    now = utcnow()
    async with r.sessions.begin() as session:
        if event_pks:
            await queries.custom_plans(session)
        rows = await session.execute(
            update(Delivery)
            .where(
                queries.one_of(session, Delivery.id, ids),
                *queries.in_partitions(event_pks),
                queries.delivery_status_is(DeliveryStatus.PENDING),
                Delivery.next_attempt_at <= now,
            )
            # While sending, next_attempt_at holds the claim time: the sweep's dead-worker clock.
            .values(
                status=DeliveryStatus.SENDING, attempts=Delivery.attempts + 1, next_attempt_at=now
            )
            .returning(*CLAIMED_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        return sorted((Claimed(*row) for row in rows), key=lambda c: c.id)


@dataclass
class Prepared:
    outgoing: list[Outgoing]
    outcomes: list[Outcome]  # rows that are not sent: skipped, held
    hashes: dict[int, str]  # subscriber id -> address hash (suppressions)
    renderers: dict[int, AlertRenderer]  # by event
    event_at: dict[int, datetime]  # when each event was received (receipts)


async def prepare(
    r: Resources, claimed: list[Claimed], matched: dict[int, list[Matched]] | None = None
) -> Prepared:
    """Re-check each row against current subscriptions and suppressions. `matched`: each
    recipient's matching subscriptions, read just before by the caller (a slice's take, for
    rows of one event), instead of read here."""
    outgoing: list[Outgoing] = []
    outcomes: list[Outcome] = []
    event_pks = {c.event_pk for c in claimed}
    async with r.sessions() as session:
        events = (
            await session.execute(
                select(Event.id, Event.payload, Event.received_at).where(Event.id.in_(event_pks))
            )
        ).all()
        payloads: dict[int, dict[str, Any]] = {pk: payload for pk, payload, _ in events}
        # Plain columns, not ORM objects: this runs for every recipient of every fan-out.
        subscribers = {
            row.id: row
            for row in await session.execute(
                select(Subscriber.id, Subscriber.email, Subscriber.email_hash).where(
                    queries.one_of(session, Subscriber.id, {c.subscriber_id for c in claimed})
                )
            )
        }
        if matched is None:
            keys = {pk: match_keys(payload) for pk, payload in payloads.items()}
            matches = await _matches(session, keys, claimed)
        else:
            matches = {
                (c.event_pk, c.subscriber_id): matched.get(c.subscriber_id, []) for c in claimed
            }
        suppressed = await queries.suppressed_hashes(
            session, (s.email_hash for s in subscribers.values())
        )
    renderers = {pk: AlertRenderer(r.mail, payload) for pk, payload in payloads.items()}
    for c in claimed:
        subscriber = subscribers.get(c.subscriber_id)
        subs = matches.get((c.event_pk, c.subscriber_id), [])
        if subscriber is None or c.event_pk not in payloads:
            outcomes.append(Outcome(c, DeliveryStatus.SKIPPED, "subscriber or event gone"))
        elif subscriber.email_hash in suppressed:
            outcomes.append(Outcome(c, DeliveryStatus.SKIPPED, "suppressed"))
            DELIVERIES.labels("suppressed").inc()
        elif not subs:
            outcomes.append(Outcome(c, DeliveryStatus.SKIPPED, "no active matching subscription"))
        elif all(sub.frequency in DIGEST_FREQUENCIES for sub in subs):
            outcomes.append(Outcome(c, DeliveryStatus.HELD))  # the digest job mails it
        else:
            outgoing.append(Outgoing(c, subscriber.email, subs))
    hashes = {s.id: s.email_hash for s in subscribers.values()}
    return Prepared(outgoing, outcomes, hashes, renderers, {pk: at for pk, _, at in events})


def render(
    r: Resources, renderers: dict[int, AlertRenderer], item: Outgoing
) -> tuple[Outcome, bytes | None]:
    """(the outcome once SMTP accepts it, the message's bytes), or (failed, None): one
    unrenderable event must not wedge a batch."""
    c = item.delivery
    try:
        msgid = message_id(r.settings)
        data = renderers[c.event_pk].render_bytes(
            subscriber_id=c.subscriber_id,
            email=item.email,
            subscriptions=item.subscriptions,
            msgid=msgid,
            stuffed=True,
        )
        return Outcome(c, DeliveryStatus.SENT, message_id=msgid), data
    except Exception as exc:
        log.exception("cannot render delivery %d", c.id)
        return Outcome(c, DeliveryStatus.FAILED, f"render: {type(exc).__name__}: {exc}"), None


async def _matches(
    session: AsyncSession, keys: dict[int, MatchKeys], claimed: list[Claimed]
) -> dict[tuple[int, int], list[Any]]:
    found: dict[tuple[int, int], list[Any]] = {}
    for pk, mk in keys.items():
        ids = [c.subscriber_id for c in claimed if c.event_pk == pk]
        for sid, subs in (await active_matches(session, mk, ids)).items():
            found[(pk, sid)] = subs
    return found


def failure(r: Resources, c: Claimed, exc: SendError, now: datetime) -> Outcome:
    error = str(exc)
    if exc.permanent:
        return Outcome(c, DeliveryStatus.FAILED, error, suppress=exc.suppresses)
    if (now - c.created_at).total_seconds() > r.settings.retry_give_up_after:
        return Outcome(c, DeliveryStatus.FAILED, f"gave up after {c.attempts} attempts: {error}")
    return Outcome(c, DeliveryStatus.RETRY, error)


async def record(
    r: Resources,
    outcomes: list[Outcome],
    hashes: dict[int, str],
    still_sending: list[Claimed],
    *,
    slice_: SliceClaim | None = None,
    final: bool = False,
) -> None:
    """Write outcomes in one transaction (and refresh the claim of rows not yet sent).

    With `slice_`, the mails' rows are written here (their first write) and the slice's claim
    is refreshed instead; `final` (every mail of the slice has its outcome) marks it done."""
    if not outcomes and not still_sending and not (slice_ and final):
        return
    now = utcnow()
    retries: dict[float, list[Claimed]] = {}
    params: list[dict[str, Any]] = []
    for o in outcomes:
        row: dict[str, Any] = {
            "id": o.delivery.id,
            "status": o.status,
            "last_error": o.error,
            "message_id": o.message_id,
            "sent_at": (o.sent_at or now) if o.status == DeliveryStatus.SENT else None,
            "next_attempt_at": now,
        }
        if o.status == DeliveryStatus.RETRY:
            delay = retry_delay(r, o.delivery.attempts)
            row.update(
                status=DeliveryStatus.PENDING, next_attempt_at=now + timedelta(seconds=delay)
            )
            retries.setdefault(delay, []).append(o.delivery)
        params.append(row)
    written: dict[int, int] = {}  # a slice's mails: subscriber id -> the new row's id
    alive_only = False

    async def write() -> None:
        written.clear()
        await _write(
            r, outcomes, params, hashes, still_sending, now, slice_, final, written, alive_only
        )

    try:
        await until_written(r, write)
    except IntegrityError:
        if slice_ is None:
            raise
        # A subscriber erased between the slice's read and this write (its foreign key): once
        # more, leaving out who is gone (the erasure is committed now).
        alive_only = True
        await until_written(r, write)
    for status, count in Counter(o.status for o in outcomes).items():
        DELIVERIES.labels(status).inc(count)
    for delay, rows in retries.items():
        ids = [written.get(c.subscriber_id, 0) if slice_ else c.id for c in rows]
        ids = [i for i in ids if i]
        if not ids:
            continue
        try:
            await enqueue_retry(
                r, ids, delay + DEFER_MARGIN, f"{now.timestamp():.6f}", event_pks_of(rows)
            )
        except (RedisError, OSError) as exc:
            log.warning("retry not enqueued (the sweep will): %s", exc)


async def _write(
    r: Resources,
    outcomes: list[Outcome],
    params: list[dict[str, Any]],
    hashes: dict[int, str],
    still_sending: list[Claimed],
    now: datetime,
    slice_: SliceClaim | None,
    final: bool,
    written: dict[int, int],
    alive_only: bool = False,
) -> None:
    """Idempotent (updates by primary key, inserts and suppressions ON CONFLICT): safe to run
    again."""
    async with r.sessions.begin() as session:
        for o in outcomes:
            if o.suppress and o.delivery.subscriber_id in hashes:
                await queries.suppress(
                    session, hashes[o.delivery.subscriber_id], "hard_bounce", o.error
                )
        if slice_ is not None:
            if params:
                rows = [
                    {
                        **row,
                        "subscriber_id": o.delivery.subscriber_id,
                        "attempts": o.delivery.attempts,
                        "created_at": o.delivery.created_at,
                    }
                    for o, row in zip(outcomes, params, strict=True)
                ]
                rows.sort(key=lambda row: row["subscriber_id"])  # ids in subscriber order
                written.update(await _insert_outcomes(session, slice_.event_pk, rows, alive_only))
            # The time of this attempt (see below); done once every mail has its row.
            values: dict[str, Any] = {"queued_at": utcnow()}
            if final:
                values["status"] = SliceStatus.DONE
            await session.execute(
                update(FanoutSlice)
                .where(
                    FanoutSlice.id == slice_.id,
                    FanoutSlice.status == SliceStatus.SENDING,
                    # A batch whose claim lapsed (the sweep handed the slice to another job)
                    # neither renews that job's claim nor marks the slice done under it.
                    FanoutSlice.runs == slice_.run,
                )
                .values(**values)
            )
            return
        # Updates by id over partitioned deliveries (a slice's rows above are inserts).
        await queries.custom_plans(session)
        if params:
            await _update_outcomes(session, params, event_pks_of(o.delivery for o in outcomes))
        if still_sending:
            # The time of this attempt, not `now`: a write retried through a database outage
            # must not renew the claim with a time the sweep already holds for stale.
            await session.execute(
                update(Delivery)
                .where(
                    queries.one_of(session, Delivery.id, [c.id for c in still_sending]),
                    *queries.in_partitions(event_pks_of(still_sending)),
                    queries.delivery_status_is(DeliveryStatus.SENDING),
                )
                .values(next_attempt_at=utcnow())
                .execution_options(synchronize_session=False)
            )


# PostgreSQL: the whole group as one UPDATE over arrays; an ORM bulk UPDATE (executemany) spends
# tens of microseconds per row in SQLAlchemy parameter processing, in the sending worker.
# `d.id = ANY(ids)` as well as the join: without it the planner hashes every row of the event
# (the partition's rows for `event_pk`: a 100k audience read whole for each 500-row batch,
# 17 of the 22 ms it took) instead of looking up the batch's rows by primary key.
_PG_OUTCOMES = text(
    "UPDATE deliveries AS d SET status = v.status, last_error = v.last_error,"
    " message_id = v.message_id, sent_at = v.sent_at, next_attempt_at = v.next_attempt_at"
    " FROM unnest(CAST(:id AS BIGINT[]), CAST(:status AS TEXT[]), CAST(:last_error AS TEXT[]),"
    " CAST(:message_id AS TEXT[]), CAST(:sent_at AS TIMESTAMPTZ[]),"
    " CAST(:next_attempt_at AS TIMESTAMPTZ[]))"
    " AS v(id, status, last_error, message_id, sent_at, next_attempt_at)"
    " WHERE d.id = v.id AND d.id = ANY(CAST(:id AS BIGINT[]))"
    " AND d.event_pk = ANY(CAST(:event_pks AS BIGINT[]))"
)


# A slice's rows, written once with their outcomes; an existing row (a replay's) left alone.
# `{alive}`: after a foreign-key violation, a subscriber erased since the slice was read is
# left out (a join, not paid on every write).
_PG_INSERT_OUTCOMES = (
    "INSERT INTO deliveries (event_pk, subscriber_id, status, attempts, next_attempt_at,"
    " last_error, message_id, created_at, sent_at)"
    " SELECT :event_pk, v.subscriber_id, v.status, v.attempts, v.next_attempt_at,"
    " v.last_error, v.message_id, v.created_at, v.sent_at"
    " FROM unnest(CAST(:subscriber_id AS BIGINT[]), CAST(:status AS TEXT[]),"
    " CAST(:attempts AS INTEGER[]), CAST(:next_attempt_at AS TIMESTAMPTZ[]),"
    " CAST(:last_error AS TEXT[]), CAST(:message_id AS TEXT[]),"
    " CAST(:created_at AS TIMESTAMPTZ[]), CAST(:sent_at AS TIMESTAMPTZ[]))"
    " AS v(subscriber_id, status, attempts, next_attempt_at, last_error, message_id,"
    " created_at, sent_at){alive}"
    " ON CONFLICT (event_pk, subscriber_id) DO NOTHING"
)
_PG_INSERT = text(_PG_INSERT_OUTCOMES.format(alive=""))
_PG_INSERT_ALIVE = text(
    _PG_INSERT_OUTCOMES.format(alive=" JOIN subscribers AS s ON s.id = v.subscriber_id")
)
_INSERTED_COLUMNS = (
    "subscriber_id",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "message_id",
    "created_at",
    "sent_at",
)


async def _insert_outcomes(
    session: AsyncSession, event_pk: int, rows: list[dict[str, Any]], alive_only: bool
) -> dict[int, int]:
    """The rows of a slice's mails; {subscriber id: new row id} of those written pending (a
    retry's job names its rows by id). No RETURNING for the rest: 500 rows read back cost the
    worker more than the one SELECT a batch with retries needs."""
    retrying = [row["subscriber_id"] for row in rows if row["status"] == DeliveryStatus.PENDING]
    if queries.dialect_name(session) == "postgresql":
        columns = {name: [row[name] for row in rows] for name in _INSERTED_COLUMNS}
        statement = _PG_INSERT_ALIVE if alive_only else _PG_INSERT
        await session.execute(statement, {**columns, "event_pk": event_pk})
        if not retrying:
            return {}
        found = await session.execute(
            select(Delivery.subscriber_id, Delivery.id).where(
                Delivery.event_pk == event_pk,
                queries.one_of(session, Delivery.subscriber_id, retrying),
                Delivery.status == DeliveryStatus.PENDING,
            )
        )
        return {sid: did for sid, did in found.all()}  # noqa: C416  # Rows, not pairs
    alive = set(
        await session.scalars(
            select(Subscriber.id).where(Subscriber.id.in_([row["subscriber_id"] for row in rows]))
        )
    )
    values = [
        {"event_pk": event_pk, **{name: row[name] for name in _INSERTED_COLUMNS}}
        for row in rows
        if row["subscriber_id"] in alive
    ]
    if not values:
        return {}
    stmt = (
        queries.insert_for(session, Delivery)
        .on_conflict_do_nothing(index_elements=["event_pk", "subscriber_id"])
        .returning(Delivery.subscriber_id, Delivery.id)
    )
    found = await session.execute(stmt, values)
    return {sid: did for sid, did in found.all()}  # noqa: C416  # Rows, not pairs


def event_pks_of(rows: Iterable[Claimed]) -> list[int]:
    """The distinct events of some claimed rows: the partitions they are in."""
    return sorted({c.event_pk for c in rows})


async def _update_outcomes(
    session: AsyncSession, params: list[dict[str, Any]], event_pks: list[int]
) -> None:
    if queries.dialect_name(session) == "postgresql":
        columns = {name: [row[name] for row in params] for name in params[0]}
        await session.execute(_PG_OUTCOMES, {**columns, "event_pks": event_pks})
    else:  # ORM bulk UPDATE by primary key: one executemany for the whole group
        await session.execute(update(Delivery), params)
