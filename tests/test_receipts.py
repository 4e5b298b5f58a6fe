"""Receipts (notifier/data/receipts.py, notifier/jobs/receipts.py): every accepted message is in
Redis before the one after next is sent, a later batch records a dead worker's accepted rows
instead of mailing them again, and PostgreSQL stays the truth when Redis has nothing to say."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import time_machine
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import select

from notifier.clock import utcnow
from notifier.data.models import Delivery, Event, Subscriber
from notifier.data.receipts import COOL_DOWN, WRITE_TIMEOUT, ReceiptBook, _Write
from notifier.jobs.outcomes import Claimed, claim
from notifier.metrics import REGISTRY
from notifier.resources import Resources
from tests.conftest import REDIS, REDIS_DB, run_worker
from tests.events_factory import fan_out_rows, new_study, post_events, subscribe
from tests.faults.harness import free_port
from tests.proxy import TcpProxy
from tests.smtp_server import RecordingSMTP

NCT = "NCT05879978"


async def fanned_out(r: Resources, client: TestClient[Any, Any], n: int) -> dict[str, int]:
    """n subscribers of the study, the event's delivery rows written and no job queued:
    {address: delivery id}."""
    for i in range(n):
        await subscribe(r, f"r{i:02d}@example.org", study=NCT)
    await post_events(client, [new_study(NCT)])
    await r.redis.flushdb()
    async with r.sessions() as session:
        event_pk = await session.scalar(select(Event.id))
    assert event_pk is not None
    await fan_out_rows(r, event_pk)
    await r.redis.flushdb()  # the send jobs are the test's to run or to lose
    async with r.sessions() as session:
        rows = await session.execute(
            select(Subscriber.email, Delivery.id).join(
                Subscriber, Subscriber.id == Delivery.subscriber_id
            )
        )
        return {email: did for email, did in rows.all()}  # noqa: C416  # Rows, not pairs


def receipt_key(r: Resources, c: Claimed) -> str:
    return r.receipts.key(c.event_pk, c.subscriber_id)


# Receipts carry when the event was received; these tests' events were received now, and a
# receipt only has to carry the same time as the one that reads it.
EVENT_AT = datetime(2026, 12, 6, tzinfo=UTC)


async def event_received(r: Resources, event_pk: int) -> datetime:
    async with r.sessions() as session:
        at = await session.scalar(select(Event.received_at).where(Event.id == event_pk))
    assert at is not None
    return at


async def receipts_left(r: Resources) -> list[bytes]:
    return list(await r.redis.keys(f"{r.receipts.prefix}:*"))


async def noted(r: Resources, c: Claimed, message_id: str) -> None:
    """As a batch notes a message the relay took."""
    at = await event_received(r, c.event_pk)
    await r.receipts.landed(r.receipts.note(c.event_pk, c.subscriber_id, at, message_id))


async def book_over_the_link(
    r: Resources, client: TestClient[Any, Any], redis_link: TcpProxy
) -> tuple[Claimed, Claimed, Redis, ReceiptBook]:
    """Two claimed rows, and a receipt book of its own over the proxied link with the first
    row's receipt landed (its connection open): (first, second, the client, the book)."""
    ids = await fanned_out(r, client, 2)
    first, second = await claim(r, sorted(ids.values()))
    link = Redis.from_url(f"redis://127.0.0.1:{redis_link.port}/{REDIS_DB}")
    book = ReceiptBook(link, r.receipts.prefix, r.settings.sweep_stale_after)
    await book.landed(book.note(first.event_pk, first.subscriber_id, EVENT_AT, "<a@x>"))
    return first, second, link, book


@pytest.fixture
async def redis_link() -> AsyncIterator[TcpProxy]:
    """Redis behind a proxy that can be made a slow link."""
    target = urlsplit(REDIS)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture(params=[0, 1], ids=["lag0", "lag1"])
def receipt_lag(request: pytest.FixtureRequest) -> int:
    lag: int = request.param
    return lag


class TestOverASlowRedis:
    @pytest.fixture
    def settings_overrides(self, redis_link: TcpProxy, receipt_lag: int) -> dict[str, Any]:
        url = f"redis://127.0.0.1:{redis_link.port}/{REDIS_DB}"
        return {"redis_url": url, "receipt_lag": receipt_lag}

    @pytest.mark.parametrize("path", ["slice", "rows"])
    async def test_no_more_than_the_lag_is_unrecorded_when_the_next_message_goes(
        self,
        client: TestClient[Any, Any],
        resources: Resources,
        smtp: RecordingSMTP,
        redis_link: TcpProxy,
        receipt_lag: int,
        path: str,
    ) -> None:
        """Redis answers 5 ms late, slower than the SMTP server: still, when the relay has a
        message, every one before it but the last NOTIFIER_RECEIPT_LAG is recorded, in Redis or
        already in PostgreSQL. So a worker killed at any moment leaves at most 1 + lag messages
        unrecorded per connection: the one the relay is taking, and those receipts on their
        way. Both paths: a fan-out's slice (rows written with their outcomes) and rows sent by
        id (a retry, the sweep)."""
        r = resources
        if path == "rows":
            ids = await fanned_out(r, client, 30)
        else:
            for i in range(30):
                await subscribe(r, f"r{i:02d}@example.org", study=NCT)
        async with r.sessions() as session:
            found = await session.execute(select(Subscriber.email, Subscriber.id))
            who: dict[str, int] = {email: sid for email, sid in found}  # noqa: C416  # Rows
        before: list[str] = []
        recorded: list[bool] = []
        direct = Redis.from_url(f"{REDIS}/{REDIS_DB}")  # what Redis holds, not what is on its way

        async def check(rcpt: str) -> None:
            if len(before) > receipt_lag:
                sid = who[before[-1 - receipt_lag]]
                async with r.sessions() as session:
                    event_pk = await session.scalar(select(Event.id))
                    status = await session.scalar(
                        select(Delivery.status).where(Delivery.subscriber_id == sid)
                    )
                assert event_pk is not None
                in_redis = bool(await direct.exists(r.receipts.key(event_pk, sid)))
                recorded.append(in_redis or status == "sent")
            before.append(rcpt)

        smtp.on_data = check
        redis_link.delay = 0.005
        if path == "rows":
            await r.redis.enqueue_job("send_deliveries", sorted(ids.values()))
        else:
            await post_events(client, [new_study(NCT)])
        await run_worker(r)
        redis_link.delay = 0
        await direct.aclose()
        assert Counter(m.rcpt_to for m in smtp.messages) == dict.fromkeys(who, 1)
        assert recorded == [True] * (30 - 1 - receipt_lag)
        assert await receipts_left(r) == []  # deleted once PostgreSQL had the outcomes


async def test_a_dead_workers_accepted_rows_are_recorded_not_mailed(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    ids = await fanned_out(r, client, 4)
    claimed = {c.id: c for c in await claim(r, sorted(ids.values()))}  # a worker claims them…
    accepted = {"r00@example.org": "<a0@notify.example.org>", "r01@example.org": "<a1@x>"}
    for email, msgid in accepted.items():  # …the relay takes two of them…
        await noted(r, claimed[ids[email]], msgid)
    # A receipt from another database under the same delivery id (its rows were created at
    # another time) proves nothing: that row is mailed.
    stranger = ids["r02@example.org"]
    await r.redis.set(receipt_key(r, claimed[stranger]), "1.000000 2.000000 <old@x>")
    noted_at = utcnow()
    # …and the worker dies before it writes their outcomes.
    avoided = REGISTRY.get_sample_value("notifier_resends_avoided_total") or 0.0

    with time_machine.travel(
        utcnow() + timedelta(seconds=r.settings.sweep_stale_after + 1), tick=True
    ):
        await r.redis.enqueue_job("sweep")
        await run_worker(r)

    assert sorted(m.rcpt_to for m in smtp.messages) == ["r02@example.org", "r03@example.org"]
    async with r.sessions() as session:
        rows = {d.id: d for d in await session.scalars(select(Delivery))}
    for email, msgid in accepted.items():
        row = rows[ids[email]]
        assert (row.status, row.message_id, row.attempts) == ("sent", msgid, 2)
        assert row.sent_at is not None
        assert abs((row.sent_at.replace(tzinfo=noted_at.tzinfo) - noted_at).total_seconds()) < 5
    assert {rows[ids[e]].status for e in ("r02@example.org", "r03@example.org")} == {"sent"}
    assert REGISTRY.get_sample_value("notifier_resends_avoided_total") == avoided + 2
    # Every receipt deleted once PostgreSQL has the outcome (the stranger's was replaced by the
    # row's own when it was mailed).
    assert await receipts_left(r) == []


async def test_without_receipts_a_dead_workers_rows_are_mailed_again(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    """Redis flushed after the kill: PostgreSQL alone, at least once (nobody is lost)."""
    r = resources
    ids = await fanned_out(r, client, 2)
    claimed = await claim(r, sorted(ids.values()))
    await noted(r, claimed[0], "<gone@x>")
    await r.redis.flushdb()
    with time_machine.travel(
        utcnow() + timedelta(seconds=r.settings.sweep_stale_after + 1), tick=True
    ):
        await r.redis.enqueue_job("sweep")
        await run_worker(r)
    assert Counter(m.rcpt_to for m in smtp.messages) == dict.fromkeys(ids, 1)


async def test_a_writer_connection_closed_by_redis_is_replaced_not_a_cool_down(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    """The writer keeps its own connection (not the pool's): when Redis closes it while idle
    (a restart, its `timeout`), the next write goes on a new one; receipts are not switched
    off, and close() leaves no connection behind."""
    r = resources
    ids = await fanned_out(r, client, 2)
    first, second = await claim(r, sorted(ids.values()))
    book = r.receipts
    await book.landed(book.note(first.event_pk, first.subscriber_id, EVENT_AT, "<a@x>"))
    assert book._conn is not None
    host, port = book._conn.transport.get_extra_info("sockname")[:2]
    assert await r.redis.client_kill(f"{host}:{port}")
    await book.landed(book.note(second.event_pk, second.subscriber_id, EVENT_AT, "<b@x>"))
    assert book.on
    assert await r.redis.exists(receipt_key(r, first), receipt_key(r, second)) == 2
    await book.close()
    assert book._conn is None


async def test_an_unreachable_redis_never_holds_up_sending(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    r = resources
    ids = await fanned_out(r, client, 2)
    claimed = await claim(r, sorted(ids.values()))
    nowhere = Redis(host="127.0.0.1", port=free_port())  # nothing listens there
    book = ReceiptBook(nowhere, r.receipts.prefix, r.settings.sweep_stale_after)
    started = time.monotonic()
    await book.landed(book.note(claimed[0].event_pk, claimed[0].subscriber_id, EVENT_AT, "<x@y>"))
    assert not book.on  # for COOL_DOWN: nobody waits for receipts meanwhile
    assert book.note(claimed[1].event_pk, claimed[1].subscriber_id, EVENT_AT, "<y@y>") is None
    await book.close()
    assert time.monotonic() - started < 2 * WRITE_TIMEOUT
    assert 0 < book.off_until - time.monotonic() <= COOL_DOWN  # then tried again
    await nowhere.aclose()


async def test_a_redis_that_stops_answering_stops_nobody_for_long(
    client: TestClient[Any, Any], resources: Resources, redis_link: TcpProxy
) -> None:
    """Replies later than WRITE_TIMEOUT on an open connection (Redis hung, a link gone quiet):
    the batch waiting for its receipt goes on after about that long, and receipts are off for
    COOL_DOWN (the watch timer, not a timeout a wait)."""
    r = resources
    _first, second, slow, book = await book_over_the_link(r, client, redis_link)
    assert book.on
    redis_link.delay = 10 * WRITE_TIMEOUT
    started = time.monotonic()
    await book.landed(book.note(second.event_pk, second.subscriber_id, EVENT_AT, "<b@x>"))
    waited = time.monotonic() - started
    assert WRITE_TIMEOUT * 0.9 <= waited < 3 * WRITE_TIMEOUT
    assert not book.on
    assert book.note(second.event_pk, second.subscriber_id, EVENT_AT, "<b@x>") is None
    redis_link.delay = 0
    await book.close()
    await slow.aclose()


async def test_writes_on_a_dropped_connection_go_again_on_a_new_one(
    client: TestClient[Any, Any], resources: Resources, redis_link: TcpProxy
) -> None:
    """The connection drops with a write on it (its replies can no longer come): the write
    goes once more on a new connection and lands; receipts stay on."""
    r = resources
    first, second, link, book = await book_over_the_link(r, client, redis_link)
    old = book._conn
    redis_link.delay = 0.2
    landing = book.note(second.event_pk, second.subscriber_id, EVENT_AT, "<b@x>")
    await asyncio.sleep(0.05)  # written, held by the link
    assert old is not None
    assert old.pending
    for writer in list(redis_link._writers):
        writer.transport.abort()
    redis_link.delay = 0
    await book.landed(landing)
    assert book.on
    assert book._conn is not None
    assert book._conn is not old
    assert await r.redis.exists(receipt_key(r, first), receipt_key(r, second)) == 2
    await book.close()
    await link.aclose()


async def test_an_error_reply_fails_its_write_and_switches_receipts_off(
    resources: Resources,
) -> None:
    """An error reply (a demoted master's READONLY) fails the write it answers."""
    book = resources.receipts
    await book.landed(book.note(1, 1, EVENT_AT, "<a@x>"))
    conn = book._conn
    assert conn is not None
    landing = asyncio.get_running_loop().create_future()
    deadline = asyncio.get_running_loop().time() + WRITE_TIMEOUT
    conn.send(_Write(b"*1\r\n$10\r\nNOSUCHCMND\r\n", 1, deadline, landing))
    await book.landed(landing)
    assert isinstance(landing.exception(), ResponseError)
    assert not book.on


async def test_writes_lost_twice_switch_receipts_off_within_their_timeout(
    client: TestClient[Any, Any], resources: Resources, redis_link: TcpProxy
) -> None:
    """A flapping Redis (each connection dropped with the write on it): a write goes once more
    on a new connection, not a third time; within its first deadline receipts go off and the
    batch waiting for it goes on (it is never held longer than WRITE_TIMEOUT and a bit)."""
    r = resources
    _first, second, link, book = await book_over_the_link(r, client, redis_link)
    redis_link.delay = 0.1  # every write is held on the link for a while

    async def drop_links() -> None:
        for _ in range(2):
            await asyncio.sleep(0.05)
            for writer in list(redis_link._writers):
                writer.transport.abort()
            await asyncio.sleep(0.1)  # the write went again on a new connection

    started = time.monotonic()
    dropping = asyncio.create_task(drop_links())
    await book.landed(book.note(second.event_pk, second.subscriber_id, EVENT_AT, "<b@x>"))
    await dropping
    assert time.monotonic() - started < 2 * WRITE_TIMEOUT
    assert not book.on
    redis_link.delay = 0
    await book.close()
    await link.aclose()
