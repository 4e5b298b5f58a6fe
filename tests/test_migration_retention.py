"""Migration 0007 on a database holding deliveries made before it (at 0006): on PostgreSQL the
table becomes partitioned with every row kept (the old table is the first partition), the
keys still hold, retention can drop that partition; the downgrade gives the plain table back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import text

from notifier.data import partitions
from notifier.data.db import make_engine, make_sessionmaker
from notifier.data.migrate import alembic_config, upgrade
from tests.test_migration_matching import fresh_url  # noqa: F401  # fixture

NOW = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)


async def _seed(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        for i in (1, 2, 3):
            await conn.execute(
                text(
                    "INSERT INTO subscribers (email, email_hash, timezone, created_at)"
                    " VALUES (:email, :hash, 'UTC', :now)"
                ),
                {"email": f"s{i}@example.org", "hash": f"h{i}", "now": NOW},
            )
        for i in (1, 2):
            await conn.execute(
                text(
                    "INSERT INTO events (event_id, nct_id, change_kind, payload, received_at,"
                    " duplicates, status, fanout_cursor, matched, fanned_out_at)"
                    " VALUES (:eid, 'NCT05879978', 'status_changed', '{}', :now, 0,"
                    " 'fanned_out', 3, 3, :now)"
                ),
                {"eid": f"e{i}", "now": NOW},
            )
        for event_pk, subscriber_id, status in [(1, 1, "sent"), (1, 2, "sent"), (1, 3, "failed")]:
            await _delivery(conn, event_pk, subscriber_id, status)
        await _delivery(conn, 2, 1, "held")
    await engine.dispose()


async def _delivery(conn: object, event_pk: int, subscriber_id: int, status: str) -> None:
    await conn.execute(  # type: ignore[attr-defined]  # an AsyncConnection
        text(
            "INSERT INTO deliveries (event_pk, subscriber_id, status, attempts,"
            " next_attempt_at, created_at) VALUES (:e, :s, :status, 1, :now, :now)"
            " ON CONFLICT (event_pk, subscriber_id) DO NOTHING"
        ),
        {"e": event_pk, "s": subscriber_id, "status": status, "now": NOW},
    )


async def _rows(url: str) -> list[tuple[int, int, int, str]]:
    engine = make_engine(url)
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, event_pk, subscriber_id, status FROM deliveries ORDER BY id")
        )
        found = [(int(a), int(b), int(c), str(d)) for a, b, c, d in rows]
    await engine.dispose()
    return found


async def _after_upgrade(url: str) -> list[str]:
    """Partitions (PostgreSQL), after writing through the new table as the app does."""
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (event_id, nct_id, change_kind, payload, received_at,"
                " duplicates, status, fanout_cursor, matched)"
                " VALUES ('e3', 'NCT05879978', 'status_changed', '{}', :now, 0, 'received', 0, 0)"
            ),
            {"now": NOW},
        )
        await _delivery(conn, 3, 2, "pending")
        await _delivery(conn, 1, 1, "pending")  # a repeat: unique per (event, subscriber) still
    names: list[str] = []
    if engine.dialect.name == "postgresql":
        async with make_sessionmaker(engine)() as session:
            names = [p.name for p in await partitions.partitions(session)]
    await engine.dispose()
    return names


async def _drop_first(url: str) -> dict[int, dict[str, int]]:
    """Retention drops the partition that was the old table (after the downgrade and upgrade
    again, it holds events 1-3): its counts are kept."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    async with sessions.begin() as session:  # everything finished
        await session.execute(
            text("UPDATE deliveries SET status = 'sent' WHERE status IN ('held', 'pending')")
        )
        await session.execute(
            text("UPDATE events SET status = 'fanned_out', fanned_out_at = :now"), {"now": NOW}
        )
    async with sessions.begin() as session:
        first = (await partitions.partitions(session))[0]
        assert await partitions.drop(session, first, NOW + timedelta(days=1), NOW)
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT event_pk, status, count FROM event_delivery_counts"))
        counts: dict[int, dict[str, int]] = {}
        for event_pk, status, n in rows:
            counts.setdefault(int(event_pk), {})[str(status)] = int(n)
    await engine.dispose()
    return counts


def test_deliveries_made_before_0007_are_kept_and_partitioned(fresh_url: str) -> None:  # noqa: F811  # the fixture
    upgrade(fresh_url, "0006")
    asyncio.run(_seed(fresh_url))
    before = asyncio.run(_rows(fresh_url))
    assert len(before) == 4
    upgrade(fresh_url)
    assert asyncio.run(_rows(fresh_url)) == before
    postgres = fresh_url.startswith("postgresql")
    names = asyncio.run(_after_upgrade(fresh_url))
    after = asyncio.run(_rows(fresh_url))
    assert after[:4] == before
    assert [row[1:] for row in after[4:]] == [(3, 2, "pending")]  # the repeat wrote nothing
    assert after[4][0] > before[-1][0]  # ids go on from the same sequence
    if postgres:
        assert names == ["deliveries_e0", "deliveries_e3"]

    command.downgrade(alembic_config(fresh_url), "0006")
    assert asyncio.run(_rows(fresh_url)) == after
    upgrade(fresh_url)
    assert asyncio.run(_rows(fresh_url)) == after
    if postgres:
        counts = asyncio.run(_drop_first(fresh_url))
        assert counts == {1: {"sent": 2, "failed": 1}, 2: {"sent": 1}, 3: {"sent": 1}}
        assert asyncio.run(_rows(fresh_url)) == []
