"""Faults survived by the real processes: a killed worker (once, and five times in one fan-out),
an SMTP outage, a restarted and flushed Redis, a PostgreSQL outage. 2,000 subscribers each time;
every one gets exactly one mail, but for what a killed worker literally had in flight: per open
SMTP connection, the message whose 250 was on its way and at most NOTIFIER_RECEIPT_LAG more,
whose receipts were on their way to Redis (notifier/data/receipts.py).

Each scenario adds a row to the table printed at the end of the run (see conftest.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from bisect import bisect_right
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.data.models import Subscription
from tests.conftest import SITE_ORIGIN
from tests.events_factory import new_study
from tests.faults.conftest import Stack
from tests.faults.harness import (
    AUDIENCE,
    AUDIENCE_ADDRESSES,
    RESULTS,
    RedisServer,
    Row,
    consent_snapshot,
    per_address,
    post_event,
    seed_audience,
    wait_all_sent,
    wait_until,
)
from tests.proxy import TcpProxy
from tests.smtp_server import RecordingSMTP

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

NCT = "NCT05879978"
DONE_WITHIN = 75.0  # seconds from the fault's end to the last mail
MAX_JOBS = 4  # NOTIFIER_WORKER_MAX_JOBS in harness.service_env: open SMTP connections


async def started(
    stack: Stack, engine: AsyncEngine, email_hash: Any
) -> tuple[set[tuple[Any, ...]], float]:
    await seed_audience(engine, email_hash)
    before = await consent_snapshot(engine)
    assert len(before) == AUDIENCE
    await asyncio.gather(stack.start_web(), stack.start_worker())
    return before, time.monotonic()


async def mails_reach(smtp: RecordingSMTP, n: int) -> None:
    async def enough() -> bool:
        return sum(per_address(smtp).values()) >= n

    await wait_until(enough, within=60, what=f"{n} mails received")


async def sending_past(smtp: RecordingSMTP, n: int) -> None:
    """At least n mails received and more arriving: the worker has batches mid-send. (Sending
    comes in bursts, a slice's batches at a time: a kill between two bursts finds nothing in
    flight and proves nothing.)"""

    async def busy() -> bool:
        count = sum(per_address(smtp).values())
        if count < n:
            return False
        await asyncio.sleep(0.01)
        return sum(per_address(smtp).values()) > count

    await wait_until(busy, within=60, interval=0.005, what=f"sending past {n} mails")


def record(
    fault: str, smtp: RecordingSMTP, consent_intact: bool, since: float, note: str = ""
) -> int:
    counts = per_address(smtp)
    duplicates = sum(c - 1 for c in counts.values())
    RESULTS.append(
        Row(
            fault=fault,
            expected=AUDIENCE,
            received=sum(counts.values()),
            duplicates=duplicates,
            consent_intact=consent_intact,
            seconds=time.monotonic() - since,
            note=note,
        )
    )
    assert len(counts) == AUDIENCE, f"{AUDIENCE - len(counts)} subscriber(s) got no mail"
    return duplicates


async def settle(smtp: RecordingSMTP) -> None:
    """After the last expected mail, wait out two sweeps: a late duplicate would show here."""
    await asyncio.sleep(2.5)


async def test_worker_killed_mid_send_then_restarted(
    stack: Stack, engine: AsyncEngine, smtp: RecordingSMTP, email_hash: Any
) -> None:
    before, since = await started(stack, engine, email_hash)
    async with aiohttp.ClientSession() as http:
        await post_event(http, stack.base_url, new_study(NCT))
    await sending_past(smtp, AUDIENCE // 5)
    assert stack.worker is not None
    await stack.worker.signal(signal.SIGKILL)
    at_kill = len(smtp.messages)
    await stack.start_worker()
    await wait_all_sent(engine, smtp, AUDIENCE, DONE_WITHIN)
    await settle(smtp)
    intact = await consent_snapshot(engine) == before
    duplicates = record(
        "worker SIGKILL mid-send, restarted", smtp, intact, since, note=f"killed at {at_kill}"
    )
    # Per connection, only the message whose 250 was on its way when the worker died and the
    # one before it, if its receipt had not reached Redis yet, can repeat.
    assert duplicates <= 2 * MAX_JOBS
    assert intact


KILLS = 5
# Mails between two kills; not a multiple of the slices' 200, so kills fall in different places
# of a burst (a kill at a burst's first mail finds little in flight).
KILL_EVERY = 290


def audience_mails(smtp: RecordingSMTP) -> list[str]:
    """Recipients of the audience's alerts, in the order the server took them."""
    return [m.rcpt_to for m in smtp.messages if m.rcpt_to in AUDIENCE_ADDRESSES]


def duplicates_per_kill(mails: list[str], kills: list[int]) -> tuple[list[int], int]:
    """Second (third…) mails to an address, by the kill after its first mail: the worker that
    died there had sent it and not recorded it. Also those first sent after the last kill."""
    first: dict[str, int] = {}
    per_kill = [0] * (len(kills) + 1)
    for i, rcpt in enumerate(mails):
        if rcpt in first:
            per_kill[bisect_right(kills, first[rcpt])] += 1
        else:
            first[rcpt] = i
    return per_kill[:-1], per_kill[-1]


@pytest.mark.parametrize("lag", [0, 1], ids=["lag0", "lag1"])
async def test_worker_killed_five_times_in_one_fanout(
    stack: Stack, engine: AsyncEngine, smtp: RecordingSMTP, email_hash: Any, lag: int
) -> None:
    """NOTIFIER_RECEIPT_LAG 0 (each receipt waited for) and 1 (the default)."""
    stack.env["NOTIFIER_RECEIPT_LAG"] = str(lag)
    before, since = await started(stack, engine, email_hash)
    async with aiohttp.ClientSession() as http:
        await post_event(http, stack.base_url, new_study(NCT))
    kills: list[int] = []  # audience mails the server had taken at each kill
    for _ in range(KILLS):
        # Killed mid-send: the worker (restarted) has sent KILL_EVERY more since the last kill.
        await sending_past(smtp, (kills[-1] if kills else 0) + KILL_EVERY)
        assert stack.worker is not None
        await stack.worker.signal(signal.SIGKILL)
        await asyncio.sleep(0.1)  # what the server had received before the kill, counted before
        kills.append(len(audience_mails(smtp)))
        await stack.start_worker()
    await wait_all_sent(engine, smtp, AUDIENCE, DONE_WITHIN)
    await settle(smtp)
    intact = await consent_snapshot(engine) == before
    per_kill, after_last = duplicates_per_kill(audience_mails(smtp), kills)
    record(
        f"worker SIGKILL x{KILLS} in one fan-out, restarted each time, receipt lag {lag}",
        smtp,
        intact,
        since,
        note="per kill: " + ", ".join(f"{d} at {k}" for d, k in zip(per_kill, kills, strict=True)),
    )
    assert kills[-1] < AUDIENCE, "the fan-out ended before the last kill"
    # Per connection: the message the relay was taking, and those whose receipt was on its way.
    assert max(per_kill) <= (1 + lag) * MAX_JOBS, per_kill  # the bar: 8
    assert after_last == 0
    assert intact


async def test_smtp_outage(
    stack: Stack, engine: AsyncEngine, smtp: RecordingSMTP, email_hash: Any
) -> None:
    before, since = await started(stack, engine, email_hash)
    async with aiohttp.ClientSession() as http:
        await post_event(http, stack.base_url, new_study(NCT))
    await mails_reach(smtp, AUDIENCE // 5)
    await smtp.stop()
    during = len(smtp.messages)
    await asyncio.sleep(4)  # several refused attempts along the retry ladder
    assert len(smtp.messages) == during
    await smtp.start()  # same port
    await wait_all_sent(engine, smtp, AUDIENCE, DONE_WITHIN)
    await settle(smtp)
    intact = await consent_snapshot(engine) == before
    duplicates = record("SMTP server down 4 s", smtp, intact, since)
    assert duplicates == 0
    assert intact


async def test_redis_restarted_and_flushed_mid_fanout(
    stack: Stack,
    engine: AsyncEngine,
    smtp: RecordingSMTP,
    email_hash: Any,
    private_redis: RedisServer,
) -> None:
    before, since = await started(stack, engine, email_hash)
    async with aiohttp.ClientSession() as http:
        await post_event(http, stack.base_url, new_study(NCT))
        await mails_reach(smtp, AUDIENCE // 10)
        await private_redis.stop()  # every queued job, result and rate-limit counter is gone
        await asyncio.sleep(1)
        await private_redis.start()  # empty, on the same port
        # The web process reconnects by itself.
        async with http.get(f"{stack.base_url}/readyz") as resp:
            ready_after = resp.status
        await wait_all_sent(engine, smtp, AUDIENCE, DONE_WITHIN)
    await settle(smtp)
    intact = await consent_snapshot(engine) == before
    duplicates = record("Redis restarted and flushed mid-fan-out", smtp, intact, since)
    assert duplicates == 0
    assert intact
    assert ready_after == 200


async def signup(http: aiohttp.ClientSession, base_url: str, email: str) -> int:
    body = {"email": email, "condition": "Small cell lung cancer"}
    headers = {"User-Agent": "Mozilla/5.0 (fault suite signup)", "Referer": f"{SITE_ORIGIN}/x"}
    async with http.post(f"{base_url}/v1/subscriptions", json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_postgres_outage_during_signup_and_fanout(
    stack: Stack,
    engine: AsyncEngine,
    smtp: RecordingSMTP,
    email_hash: Any,
    pg_proxy: TcpProxy,
) -> None:
    _, since = await started(stack, engine, email_hash)
    statuses: list[int] = []
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            statuses.append(await signup(http, stack.base_url, f"before{i}@example.org"))
        assert statuses == [202, 202, 202]
        before = await consent_snapshot(engine)
        assert len(before) == AUDIENCE + 3
        await post_event(http, stack.base_url, new_study(NCT))
        await mails_reach(smtp, AUDIENCE // 5)

        await pg_proxy.stop()  # PostgreSQL gone for both processes
        outage_ends = time.monotonic() + 4
        during: list[int] = []
        while time.monotonic() < outage_ends:
            during.append(await signup(http, stack.base_url, f"during{len(during)}@example.org"))
            async with http.get(f"{stack.base_url}/readyz") as resp:
                during.append(resp.status)
            await asyncio.sleep(0.3)
        await pg_proxy.start()  # same port: the processes were not restarted

        recovered: list[int] = []

        async def signup_works() -> bool:
            recovered.append(await signup(http, stack.base_url, "after@example.org"))
            return recovered[-1] == 202

        await wait_until(signup_works, within=15, interval=0.2, what="signups work again")
        await wait_all_sent(engine, smtp, AUDIENCE, DONE_WITHIN)
    await settle(smtp)
    after = await consent_snapshot(engine)
    intact = before <= after  # every earlier signup and consent kept, plus the new one
    duplicates = record("PostgreSQL down 4 s (signup + fan-out)", smtp, intact, since)
    assert set(during) == {503}, during  # never a 500, never a hang
    assert set(recovered) <= {202, 503}, recovered
    async with engine.connect() as conn:
        pending = set(
            await conn.scalars(select(Subscription.status).where(Subscription.id > AUDIENCE))
        )
    assert pending == {"pending"}
    assert duplicates == 0
    assert intact
