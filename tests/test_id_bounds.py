"""Ids beyond a BIGINT are refused at the edge (found in review: 10**20 reached the database,
a 500 on SQLite and a misleading "retry" 503 on PostgreSQL)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from notifier.resources import Resources
from tests.factories import make_subscription


async def test_ids_beyond_bigint_are_refused_not_a_database_error(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    async with resources.sessions.begin() as session:
        sub = await make_subscription(session, resources, email="big@example.org")
    manage = resources.tokens.manage(sub.subscriber_id)
    resp = await client.post(
        f"/v1/manage/{manage}",
        json={"action": "unsubscribe", "subscription": 10**20},
        headers={"Accept": "application/json"},
    )
    assert resp.status == 422
    confirm = resources.tokens.confirm(sub.subscriber_id, "n" * 32)
    resp = await client.post(
        f"/v1/confirm/{confirm}",
        json={"subscriptions": [10**20]},
        headers={"Accept": "application/json"},
    )
    assert resp.status == 400
    assert "error" in await resp.json()
