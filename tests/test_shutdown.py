"""Graceful shutdown of the real processes: SIGTERM lets in-flight work finish, then exit 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, insert, select

from notifier.clock import utcnow
from notifier.data.models import Delivery, Subscriber, Subscription
from notifier.resources import Resources
from tests.events_factory import new_study
from tests.faults.harness import (
    Service,
    free_port,
    per_address,
    post_event,
    seed_audience,
    service_env,
    wait_all_sent,
    wait_ready,
    wait_until,
)
from tests.smtp_server import RecordingSMTP

pytestmark = pytest.mark.slow


def env_for(r: Resources, **extra: str) -> dict[str, str]:
    s = r.settings
    return {**service_env(s.database_url, s.redis_url, s.smtp_url, s.queue_name), **extra}


async def test_sigterm_to_web_lets_requests_in_flight_complete(
    resources: Resources, tmp_path: Path
) -> None:
    r = resources
    port = free_port()
    web = Service("web", ["web", "--port", str(port)], env_for(r), tmp_path / "web.log")
    await web.start()
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base)
    body = {"email": "slow@example.org", "study": "NCT05879978"}
    async with aiohttp.ClientSession() as http, r.engine.connect() as blocker:
        # An idle keep-alive connection too: it must be closed, not hold the shutdown up.
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        # Hold the address's row in an open transaction: the signup's INSERT waits on it (a
        # unique-key wait on PostgreSQL, the write lock on SQLite), so the request is in flight.
        transaction = await blocker.begin()
        await blocker.execute(
            insert(Subscriber).values(
                email="slow@example.org", email_hash="x" * 64, created_at=utcnow()
            )
        )
        in_flight = asyncio.create_task(http.post(f"{base}/v1/subscriptions", json=body))
        await asyncio.sleep(1.0)
        assert not in_flight.done()
        assert web.process is not None
        web.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # shutting down: no new connections, the old one still served
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(f"{base}/healthz")
        assert not in_flight.done()
        await transaction.rollback()
        resp = await asyncio.wait_for(in_flight, 20)
        assert resp.status == 202, await resp.text()
        assert await resp.json() == {"status": "pending"}
    code = await asyncio.wait_for(web.process.wait(), 30)
    assert code == 0, web.tail()
    async with r.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Subscription)) == 1


async def test_sigterm_to_worker_finishes_the_batch_in_flight_and_loses_nothing(
    resources: Resources, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    r = resources
    n = 300
    await seed_audience(r.engine, r.email_hash, n)
    # 50 mails a batch at 100 mails/s: every batch takes half a second, so SIGTERM lands mid-batch.
    env = env_for(
        r,
        NOTIFIER_SEND_RATE="100",
        NOTIFIER_WORKER_MAX_JOBS="2",
        NOTIFIER_SHUTDOWN_GRACE="20",
    )
    port = free_port()
    web = Service("web", ["web", "--port", str(port)], env, tmp_path / "web.log")
    first = Service("worker", ["worker"], env, tmp_path / "worker-1.log")
    await asyncio.gather(web.start(), first.start())
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base)
        async with aiohttp.ClientSession() as http:
            await post_event(http, base, new_study("NCT05879978"))

        async def sending() -> bool:
            return len(smtp.messages) >= 60

        await wait_until(sending, within=60, what="the first mails")
        code = await first.signal(signal.SIGTERM)
        assert code == 0, first.tail()
        at_exit = per_address(smtp)
        async with r.sessions() as session:
            rows = await session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)
            )
            states = {row[0]: int(row[1]) for row in rows}
        # The batches in flight ran to their end and were recorded: nothing is left claimed,
        # and what was mailed is exactly what is recorded as sent.
        assert "sending" not in states, states
        assert states.get("sent", 0) == sum(at_exit.values()) < n
        assert max(at_exit.values()) == 1

        second = Service("worker", ["worker"], env, tmp_path / "worker-2.log")
        await second.start()
        try:
            await wait_all_sent(r.engine, smtp, n, within=60)
        finally:
            await second.stop()
    finally:
        await web.stop()
    counts = per_address(smtp)
    assert len(counts) == n
    assert set(counts.values()) == {1}, "a mail was sent twice"
