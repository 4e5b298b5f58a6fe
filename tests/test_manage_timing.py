"""Hostile testing, round two (issue 18, finding 4): `POST /v1/manage` takes as long for an
unknown address as for a confirmed one, so its timing does not tell who is subscribed.

The report measured medians of 4.27 ms (unknown) and 5.63 ms (confirmed), a ratio of 1.32. The
requests are interleaved (so load on the machine hits both alike), and the statistic is the
ratio of medians, compared with a generous bound; no absolute time is asserted.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from notifier.resources import Resources
from tests.factories import make_subscription

ROUNDS = 120


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"ip_requests_per_minute": 1_000_000}


async def _timed(client: TestClient[Any, Any], email: str) -> float:
    started = time.perf_counter()
    resp = await client.post("/v1/manage", json={"email": email})
    await resp.read()
    elapsed = time.perf_counter() - started
    assert resp.status == 202
    return elapsed


@pytest.mark.postgres_only
async def test_unknown_and_confirmed_addresses_take_the_same_time(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    async with resources.sessions.begin() as session:
        for i in range(3):
            await make_subscription(
                session, resources, email="known@example.org", label=f"NCT0587997{i}"
            )
    for _ in range(20):  # warm up both paths
        await _timed(client, "known@example.org")
        await _timed(client, "nobody@example.org")
    known: list[float] = []
    unknown: list[float] = []
    for i in range(ROUNDS):
        pair = [("known@example.org", known), (f"nobody{i}@example.org", unknown)]
        if i % 2:
            pair.reverse()
        for email, samples in pair:
            samples.append(await _timed(client, email))
    await resources.redis.flushdb()  # the queued lookups are not this test's business
    ratio = statistics.median(known) / statistics.median(unknown)
    assert 0.8 <= ratio <= 1.25, (
        f"median known {statistics.median(known) * 1000:.2f} ms, "
        f"unknown {statistics.median(unknown) * 1000:.2f} ms"
    )
