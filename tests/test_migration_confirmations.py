"""Migration 0008 on a database with addresses made before it: each gets the upgrade's time as
its last confirmation job, so the confirmation sweep does not mail every pending request
already answered by the previous version (a burst of second mails after an upgrade)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import select, text

from notifier.data.db import make_engine, make_sessionmaker
from notifier.data.migrate import alembic_config, upgrade
from notifier.data.models import Subscriber
from tests.test_migration_matching import fresh_url  # noqa: F401  # fixture

AN_HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


async def _seed(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO subscribers (email, email_hash, timezone, created_at)"
                " VALUES ('p@example.org', 'h1', 'UTC', :at)"
            ),
            {"at": AN_HOUR_AGO},
        )
        await conn.execute(
            text(
                "INSERT INTO subscriptions (subscriber_id, kind, match_key, label, broad, status,"
                " paused, frequency, discreet, requested_at, updated_at)"
                " VALUES (1, 'study', 'study:NCT05879978', 'NCT05879978', false, 'pending',"
                " false, 'instant', false, :at, :at)"
            ),
            {"at": AN_HOUR_AGO},
        )
    await engine.dispose()


async def _stamps(url: str) -> list[datetime | None]:
    engine = make_engine(url)
    async with make_sessionmaker(engine)() as session:
        stamps = list(await session.scalars(select(Subscriber.confirm_job_at)))
    await engine.dispose()
    return stamps


def test_addresses_made_before_0008_count_as_mailed(fresh_url: str) -> None:  # noqa: F811  # the fixture
    upgrade(fresh_url, "0007")
    asyncio.run(_seed(fresh_url))
    upgrade(fresh_url)
    (stamp,) = asyncio.run(_stamps(fresh_url))
    assert stamp is not None
    assert stamp > AN_HOUR_AGO  # after the pending request: the sweep leaves it alone
    assert abs((stamp - datetime.now(UTC)).total_seconds()) < 120
    command.downgrade(alembic_config(fresh_url), "0007")
    upgrade(fresh_url)
    assert len(asyncio.run(_stamps(fresh_url))) == 1  # the address survived the round trip
