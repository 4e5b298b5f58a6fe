"""Signups that race each other, an unsubscribe or the purge end as if they ran one at a time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import delete, func, select, text, update

from notifier.clock import utcnow
from notifier.data.models import Subscriber, Subscription
from notifier.resources import Resources
from tests.conftest import run_worker
from tests.smtp_server import RecordingSMTP
from tests.test_subscriptions import (  # noqa: F401  # `resources` and `settings_overrides` are fixture overrides
    ADA,
    STUDY,
    resources_closing_limits,
    settings_overrides,
    signup,
    subscriptions,
)

Client = TestClient[Any, Any]


async def test_concurrent_signups_of_one_address_make_one_subscriber_and_one_subscription(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    statuses = await asyncio.gather(
        *(signup(client, ip=f"198.51.100.{i}", timezone="Europe/Paris") for i in range(20))
    )
    assert {resp.status for resp in statuses} == {202}
    async with resources.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Subscriber)) == 1
    [row] = await subscriptions(resources)
    assert (row.status, row.match_key) == ("pending", f"study:{STUDY}")
    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1


async def _wait_for_a_lock_wait(resources: Resources) -> None:
    """Until some transaction of this database waits for a row lock (the signup, below)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with resources.engine.connect() as conn:
        for _ in range(500):
            waiting = await conn.scalar(query)
            await conn.rollback()  # pg_stat_activity stays as it was for a whole transaction
            if waiting:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the signup never waited for the row")


@pytest.mark.postgres_only
@pytest.mark.parametrize("other", ["unsubscribe", "purge"])
async def test_a_signup_racing_an_unsubscribe_or_the_purge_acts_on_what_they_left(
    client: Client, resources: Resources, other: str
) -> None:
    assert (await signup(client, ip="192.0.2.1")).status == 202
    [before] = await subscriptions(resources)
    if other == "unsubscribe":
        change: Any = (
            update(Subscription)
            .where(Subscription.id == before.id)
            .values(status="unsubscribed", unsubscribed_at=utcnow(), unsubscribe_reason="link")
        )
    else:
        change = delete(Subscription).where(Subscription.id == before.id)
    async with resources.engine.connect() as conn:
        await conn.begin()
        await conn.execute(change)  # not committed yet: the signup must wait for the row
        racing = asyncio.create_task(signup(client, ip="192.0.2.77"))
        await _wait_for_a_lock_wait(resources)
        await conn.commit()
    assert (await racing).status == 202
    [after] = await subscriptions(resources)
    # Pending again on this request's evidence, as if the other writer had finished first.
    assert (after.status, after.request_ip) == ("pending", "192.0.2.77")
    assert (after.unsubscribed_at, after.unsubscribe_reason) == (None, None)
    assert (after.id == before.id) == (other == "unsubscribe")  # resubscribed, or new
