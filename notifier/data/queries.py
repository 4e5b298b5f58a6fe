"""Small async queries shared by handlers and jobs; they take the session first and never commit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.data.models import Delivery, Subscriber, Subscription, Suppression
from notifier.data.study_queries import study_titles as study_titles  # pages name studies by title


def delivery_status_is(status: str) -> ColumnElement[bool]:
    """`deliveries.status = status` for statements that pick their rows by primary key, written
    so that no index on status can serve it. With stale statistics (a fan-out creates a whole
    audience of pending rows within seconds) PostgreSQL took (status, next_attempt_at) for a
    500-id claim and walked every pending entry, live or dead: 35 ms instead of ~2 ms a claim,
    and a second 100k fan-out ran at two thirds of the first one's rate (measured)."""
    return func.coalesce(Delivery.status, "") == status


def one_of(session: AsyncSession, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN values`. On PostgreSQL as `= ANY(array)`: one parameter however many values,
    so a send batch's 500 ids are neither rendered one bind at a time by SQLAlchemy (a few
    percent of a sending worker's CPU, measured) nor a new statement for asyncpg to prepare
    for every list length."""
    wanted = list(values)
    condition: ColumnElement[bool]
    if dialect_name(session) == "postgresql":
        condition = column == any_(bindparam(None, wanted, type_=postgresql.ARRAY(column.type)))
    else:
        condition = column.in_(wanted)
    return condition


def in_partitions(event_pks: list[int] | None) -> list[ColumnElement[bool]]:
    """`deliveries.event_pk IN (...)` when the events are known: on PostgreSQL the partitions
    to look in (deliveries are partitioned by event), so a lookup by id probes only those.
    Nothing when they are not known (a job queued before they were passed along)."""
    return [Delivery.event_pk.in_(event_pks)] if event_pks else []


async def custom_plans(session: AsyncSession) -> None:
    """PostgreSQL plans this transaction's statements for their parameters every time: a
    generic plan of an update by id on partitioned deliveries visits every partition (14 ms
    for 500 ids over 35 partitions, 3.8 ms with a custom plan that keeps the rows' own)."""
    if dialect_name(session) == "postgresql":
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


def dialect_name(session: AsyncSession) -> str:
    """ "postgresql" or "sqlite": for the few statements written per dialect."""
    return session.bind.dialect.name if session.bind is not None else ""


def insert_for(session: AsyncSession, table: Any) -> Any:
    """INSERT with ON CONFLICT support on both dialects (postgresql.insert or sqlite.insert)."""
    return dialect_insert(dialect_name(session), table)


def dialect_insert(dialect_name: str, table: Any) -> Any:
    """insert_for by dialect name, for a statement built once per dialect."""
    return sqlite.insert(table) if dialect_name == "sqlite" else postgresql.insert(table)


async def is_suppressed(session: AsyncSession, email_hash: str) -> bool:
    found = await session.scalar(
        select(Suppression.id).where(Suppression.email_hash == email_hash).limit(1)
    )
    return found is not None


async def suppressed_hashes(session: AsyncSession, hashes: Iterable[str]) -> set[str]:
    wanted = list(set(hashes))
    if not wanted:
        return set()
    rows = await session.scalars(
        select(Suppression.email_hash).where(one_of(session, Suppression.email_hash, wanted))
    )
    return set(rows)


async def subscriber_by_email(session: AsyncSession, email: str) -> Subscriber | None:
    result: Subscriber | None = await session.scalar(
        select(Subscriber).where(Subscriber.email == email)
    )
    return result


async def suppress(
    session: AsyncSession, email_hash: str, reason: str, detail: str | None = None
) -> bool:
    """Add to the suppression list and end every subscription of the address.

    Returns True when the address was not suppressed before. Idempotent.
    """
    stmt = (
        insert_for(session, Suppression)
        .values(email_hash=email_hash, reason=reason, detail=detail, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["email_hash"])
        .returning(Suppression.id)
    )
    inserted = (await session.execute(stmt)).scalar_one_or_none()
    subscriber_ids = select(Subscriber.id).where(Subscriber.email_hash == email_hash)
    await session.execute(
        update(Subscription)
        .where(
            Subscription.subscriber_id.in_(subscriber_ids),
            Subscription.status != "unsubscribed",
        )
        .values(status="unsubscribed", unsubscribed_at=utcnow(), unsubscribe_reason=reason)
    )
    return inserted is not None
