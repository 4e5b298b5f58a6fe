"""Migration 0003 on a database holding subscriptions made before it (at 0002): they are
resolved through the vocabulary and still match, now with narrower studies too."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select, text

from notifier.core.matching import iter_matching, match_keys
from notifier.data.db import make_engine, make_sessionmaker
from notifier.data.migrate import upgrade
from notifier.data.models import Subscriber, Subscription
from tests.conftest import BACKENDS, PG_ADMIN
from tests.events_factory import new_study

# (email, kind, match_key, label, mesh_id, broad) as signup stored them before 0003.
BEFORE = [
    ("typed@example.org", "condition", "cond:lung cancer", "Lung cancer", None, False),
    ("site@example.org", "condition", "cond:net", "NET", "D000018358", False),
    ("broad@example.org", "condition", "cond:thoracic", "Thoracic", "D000013899", True),
    ("text@example.org", "condition", "cond:zz rare thing", "zz rare thing", None, False),
    ("study@example.org", "study", "study:NCT02856893", "NCT02856893", None, False),
]


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        with tempfile.TemporaryDirectory(prefix="notifier-migrate-") as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/old.db"
        return
    name = f"notifier_migrate_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _seed(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        for i, (email, kind, key, label, mesh, broad) in enumerate(BEFORE, start=1):
            await conn.execute(
                text(
                    "INSERT INTO subscribers (id, email, email_hash, timezone, created_at)"
                    " VALUES (:id, :email, :hash, 'UTC', CURRENT_TIMESTAMP)"
                ),
                {"id": i, "email": email, "hash": f"h{i}"},
            )
            await conn.execute(
                text(
                    "INSERT INTO subscriptions (subscriber_id, kind, match_key, label, mesh_id,"
                    " broad, status, paused, frequency, discreet, requested_at, updated_at)"
                    " VALUES (:sid, :kind, :key, :label, :mesh, :broad, 'confirmed', false,"
                    " 'instant', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"sid": i, "kind": kind, "key": key, "label": label, "mesh": mesh, "broad": broad},
            )
    await engine.dispose()


async def _matched(url: str, event: dict[str, Any]) -> set[str]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    ids: list[int] = []
    async for page in iter_matching(sessions, match_keys(event), 100):
        ids += page
    async with sessions() as session:
        emails = set(await session.scalars(select(Subscriber.email).where(Subscriber.id.in_(ids))))
        typed = await session.scalar(
            select(Subscription).where(Subscription.label == "Lung cancer")
        )
    await engine.dispose()
    assert typed is not None
    assert typed.mesh_id == "D000008175"  # resolved by the migration: Lung Neoplasms
    assert typed.resolved
    return emails


def test_subscriptions_made_before_0003_still_match(fresh_url: str) -> None:
    upgrade(fresh_url, "0002")
    asyncio.run(_seed(fresh_url))
    upgrade(fresh_url)
    # APPLE's record says only "NSCLC": the typed "Lung cancer" (text only before) now gets it.
    assert asyncio.run(_matched(fresh_url, new_study("NCT02856893"))) == {
        "typed@example.org",
        "broad@example.org",
        "study@example.org",
    }
    # A site's mesh_id kept as it was: the NET study still reaches it.
    assert asyncio.run(_matched(fresh_url, new_study("NCT05844332"))) == {"site@example.org"}
    # Text that resolves to nothing still matches as text.
    event = new_study("NCT05844332")
    event["study"]["conditions"] = ["ZZ rare thing"]
    assert "text@example.org" in asyncio.run(_matched(fresh_url, event))
