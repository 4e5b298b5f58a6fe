"""PostgreSQL's partitions of `deliveries` (RANGE on event_pk): list, roll, and drop with counts.

Event ids come from one sequence and grow with time, so a range of event ids is a span of time.
The newest partition spans SPAN ids from its lower bound. Rolling creates the next one and moves
the events' id sequence to its lower bound: new events (and all their delivery rows, whenever
they are written) land there, and the previous partition only keeps the rows of events it has.
No partition is ever detached or re-bounded, so a roll takes no scan and locks for a moment.

A partition is dropped once every event in its range is finished (not received or fanning out)
since before the cutoff and none of its rows is still live (pending, sending, held for a digest,
or being mailed in one): its rows' counts by event and status go to event_delivery_counts, the
events are marked compacted and their (done) fan-out slices deleted in the DROP's transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.data.models import Event, FanoutSlice
from notifier.data.states import LIVE_DELIVERY, OPEN_EVENT, OPEN_SLICE

SPAN = 10**9  # event ids a partition spans: far more than any day's events
# A DROP or CREATE of a partition waits at most this long for the parent's lock, so that a long
# transaction on deliveries delays retention to its next run, never the send path behind it.
LOCK_TIMEOUT = "5s"
NAME = re.compile(r"^deliveries_e\d+$")
_BOUND = re.compile(r"FROM \((.+)\) TO \((.+)\)")


@dataclass(frozen=True)
class Partition:
    name: str
    lower: int | None  # None: MINVALUE
    upper: int

    def holds(self) -> list[ColumnElement[bool]]:
        """WHERE clauses on events.id for the events whose rows this partition holds."""
        clauses: list[ColumnElement[bool]] = [Event.id < self.upper]
        if self.lower is not None:
            clauses.append(Event.id >= self.lower)
        return clauses


def is_partition(name: str | None) -> bool:
    """A partition's table name (Alembic's comparison leaves them out: not in the models)."""
    return name is not None and NAME.match(name) is not None


def compared(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's include_name: partitions and their indexes are not in the models."""
    if type_ == "table":
        return not is_partition(name)
    return not is_partition(parent_names.get("table_name"))


def _bound(value: str) -> int | None:
    value = value.strip().strip("'")
    return None if value.upper() == "MINVALUE" else int(value)


async def partitions(session: AsyncSession) -> list[Partition]:
    """Every partition of deliveries, oldest range first."""
    rows = await session.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'deliveries'::regclass"
        )
    )
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound)
        upper = _bound(match.group(2)) if match else None
        if match is None or upper is None:  # DEFAULT or open-ended: never made here
            continue
        found.append(Partition(name, _bound(match.group(1)), upper))
    return sorted(found, key=lambda p: p.upper)


async def roll(session: AsyncSession, now: datetime, every_seconds: float) -> Partition | None:
    """Start a new partition when the newest one's first event is older than `every_seconds`:
    the new partition, or None (nothing to do)."""
    current = (await partitions(session))[-1]
    first = await session.scalar(
        select(Event.received_at).where(*current.holds()).order_by(Event.id).limit(1)
    )
    if first is None or (now - first).total_seconds() < every_seconds:
        return None
    lower = current.upper
    new = Partition(f"deliveries_e{lower}", lower, lower + SPAN)
    await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    await session.execute(
        text(
            f"CREATE TABLE {new.name} PARTITION OF deliveries"
            f" FOR VALUES FROM ({new.lower}) TO ({new.upper})"
        )
    )
    # The next event id is the new partition's first (never backwards).
    await session.execute(
        text(
            "SELECT setval(pg_get_serial_sequence('events', 'id'),"
            " GREATEST(:last, (SELECT max(id) FROM events)))"
        ),
        {"last": lower - 1},
    )
    return new


def _blocking_event(part: Partition, cutoff: datetime) -> Select[int]:
    """An event of the partition that is not finished since before `cutoff`, if any."""
    return (
        select(Event.id)
        .where(
            *part.holds(),
            or_(
                Event.status.in_(OPEN_EVENT),
                Event.fanned_out_at.is_(None),
                Event.fanned_out_at >= cutoff,
            ),
        )
        .limit(1)
    )


async def _has_live_rows(session: AsyncSession, part: Partition) -> bool:
    found = await session.scalar(
        text(f"SELECT 1 FROM {part.name} WHERE status IN :live LIMIT 1").bindparams(  # noqa: S608  # the name comes from pg_inherits, never from input
            bindparam("live", expanding=True)
        ),
        {"live": list(LIVE_DELIVERY)},
    )
    return found is not None


async def droppable(session: AsyncSession, part: Partition, cutoff: datetime) -> str | None:
    """Why `part` must stay (None: it may go)."""
    blocking = await session.scalar(_blocking_event(part, cutoff))
    if blocking is not None:
        return f"event {blocking} is not finished since before the cutoff"
    if await _has_live_rows(session, part):
        return "rows still pending, sending or held for a digest"
    if await session.scalar(
        select(FanoutSlice.id)
        .where(
            FanoutSlice.event_pk < part.upper,
            *([FanoutSlice.event_pk >= part.lower] if part.lower is not None else []),
            FanoutSlice.status.in_(OPEN_SLICE),
        )
        .limit(1)
    ):
        return "a fan-out slice still being sent (its rows are not all written)"
    return None


_COUNT = text(
    "INSERT INTO event_delivery_counts (event_pk, status, count)"
    " SELECT event_pk, status, count(*) FROM {name} GROUP BY event_pk, status"
    " ON CONFLICT (event_pk, status)"
    " DO UPDATE SET count = event_delivery_counts.count + excluded.count"
)


async def drop(session: AsyncSession, part: Partition, cutoff: datetime, now: datetime) -> bool:
    """In the caller's transaction: lock the partition's events (a replay waits, then sees them
    compacted) and the partition, check again, count its rows into event_delivery_counts, mark
    its events compacted and DROP it. False when it must stay after all."""
    await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    await session.execute(select(Event.id).where(*part.holds()).with_for_update())
    await session.execute(text(f"LOCK TABLE {part.name} IN ACCESS EXCLUSIVE MODE"))
    if await droppable(session, part, cutoff) is not None:
        return False
    await session.execute(text(_COUNT.text.format(name=part.name)))
    await session.execute(
        update(Event)
        .where(*part.holds(), Event.compacted_at.is_(None))
        .values(compacted_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(text(f"DROP TABLE {part.name}"))
    # The events' fan-out slices are all done (the events are finished): they go too.
    await session.execute(
        delete(FanoutSlice).where(
            FanoutSlice.event_pk < part.upper,
            *([FanoutSlice.event_pk >= part.lower] if part.lower is not None else []),
        )
    )
    return True
