"""Failures on the way to the inbox: SMTP 4xx/5xx, an SMTP outage, a flushed Redis, a dead worker.

Each test checks the one promise: every matching subscriber gets the mail exactly once (or, for a
permanent failure, a visible `failed` row), and the only duplicate is the documented one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import time_machine
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, insert, select, update

from notifier.app import create_app
from notifier.clock import utcnow
from notifier.core import events
from notifier.data.models import (
    Delivery,
    Event,
    FanoutSlice,
    Subscriber,
    Subscription,
    Suppression,
)
from notifier.data.states import DeliveryStatus
from notifier.jobs.fanout import fanout_event, take_slice
from notifier.jobs.outcomes import Outcome, claim, record
from notifier.jobs.sending import send_deliveries
from notifier.jobs.sweep import sweep
from notifier.resources import Resources, open_resources
from tests.conftest import run_worker
from tests.events_factory import fan_out_rows, new_study, post_events, subscribe
from tests.proxy import TcpProxy
from tests.smtp_server import RecordingSMTP


async def rows(r: Resources) -> list[Delivery]:
    async with r.sessions() as session:
        return list(await session.scalars(select(Delivery).order_by(Delivery.id)))


def per_address(smtp: RecordingSMTP) -> Counter[str]:
    return Counter(m.rcpt_to for m in smtp.messages)


async def test_451_twice_then_250_gives_exactly_one_mail(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    await subscribe(resources, "ada@example.org", study="NCT05879978")
    await subscribe(resources, "bob@example.org", study="NCT05879978")
    smtp.reject["ada@example.org"] = ["451 4.3.0 try later", "451 4.3.0 still busy"]
    await post_events(client, [new_study("NCT05879978")])
    await run_worker(resources)
    assert per_address(smtp) == {"ada@example.org": 1, "bob@example.org": 1}
    by_status = {(d.status, d.attempts) for d in await rows(resources)}
    assert by_status == {("sent", 3), ("sent", 1)}


async def test_550_5_1_1_is_not_retried_and_suppresses_the_address(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    await subscribe(r, "gone@example.org", study="NCT05879978")
    await subscribe(r, "gone@example.org", condition="SCLC")
    await subscribe(r, "policy@example.org", study="NCT05879978")
    smtp.reject["gone@example.org"] = "550 5.1.1 no such user"
    smtp.reject["policy@example.org"] = "550 5.7.1 rejected by policy"
    await post_events(client, [new_study("NCT05879978")])
    await run_worker(r)
    assert smtp.messages == []
    failed = await rows(r)
    assert [(d.status, d.attempts) for d in failed] == [("failed", 1), ("failed", 1)]
    assert "5.1.1" in (failed[0].last_error or "")
    async with r.sessions() as session:
        suppressed = set(await session.scalars(select(Suppression.email_hash)))
        statuses = set(await session.scalars(select(Subscription.status)))
    # 5.1.x: the mailbox does not exist; 5.7.1 is about this message, not the address.
    assert suppressed == {r.email_hash("gone@example.org")}
    assert statuses == {"unsubscribed", "confirmed"}


async def test_an_smtp_outage_loses_nothing_and_mails_once(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    emails = [f"o{i}@example.org" for i in range(6)]
    for email in emails:
        await subscribe(resources, email, study="NCT05879978")
    await smtp.stop()
    await post_events(client, [new_study("NCT05879978")])
    worker = asyncio.create_task(run_worker(resources))
    await asyncio.sleep(0.8)  # several refused attempts along the retry ladder
    assert smtp.messages == []
    attempts = {d.attempts for d in await rows(resources)}
    assert max(attempts) >= 2, attempts
    await smtp.start()  # same port
    await asyncio.wait_for(worker, 20)
    assert per_address(smtp) == dict.fromkeys(emails, 1)
    assert {d.status for d in await rows(resources)} == {"sent"}


@pytest.mark.parametrize("answer", ["554 5.6.0 content refused", "451 4.3.0 try later"])
async def test_a_message_refused_after_its_data_leaves_the_session_usable(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP, answer: str
) -> None:
    """The relay takes the whole message, then refuses it: that message fails (5xx, without a
    suppression: no mailbox error) or is retried (4xx), and the next one goes out over the same
    connection."""
    await subscribe(resources, "first@example.org", study="NCT05879978")
    await subscribe(resources, "second@example.org", study="NCT05879978")
    smtp.reject_data["first@example.org"] = answer
    await post_events(client, [new_study("NCT05879978")])
    await run_worker(resources)
    first, second = await rows(resources)
    if answer.startswith("5"):
        assert [m.rcpt_to for m in smtp.messages] == ["second@example.org"]
        assert smtp.connections == 1
        assert (first.status, second.status) == ("failed", "sent")
        assert (first.last_error or "").startswith("554 5.6.0")
    else:
        assert [m.rcpt_to for m in smtp.messages] == ["second@example.org", "first@example.org"]
        assert smtp.connections == 2  # the batch, then the retry's
        assert (first.status, first.attempts, second.status) == ("sent", 2, "sent")
    async with resources.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0


async def test_a_mail_that_cannot_be_rendered_fails_alone(
    client: TestClient[Any, Any],
    resources: Resources,
    smtp: RecordingSMTP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages are rendered one by one as the batch sends them: one that raises is recorded as
    failed with the reason, and the messages before and after it in the batch still go out."""
    from notifier.mail.alerts import AlertRenderer

    original = AlertRenderer.render_bytes

    def render(self: AlertRenderer, **kwargs: Any) -> Any:
        if kwargs["email"] == "b@example.org":
            # Longer than the column: recorded cut, never failing the batch's other outcomes.
            raise ValueError("template blew up" + "!" * 600)
        return original(self, **kwargs)

    monkeypatch.setattr(AlertRenderer, "render_bytes", render)
    for email in ("a@example.org", "b@example.org", "c@example.org"):
        await subscribe(resources, email, study="NCT05879978")
    await post_events(client, [new_study("NCT05879978")])
    await run_worker(resources)
    assert per_address(smtp) == {"a@example.org": 1, "c@example.org": 1}
    outcomes = [(d.status, d.last_error) for d in await rows(resources)]
    assert outcomes == [
        ("sent", None),
        ("failed", ("render: ValueError: template blew up" + "!" * 600)[:500]),
        ("sent", None),
    ]


async def test_a_refused_sender_retries_and_never_suppresses_the_recipient(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    """A 5.1.x answer to MAIL FROM is about our envelope sender (a relay that distrusts its
    domain, a misconfigured NOTIFIER_MAIL_FROM): the recipient keeps their subscriptions and
    the mail waits on the retry ladder until the sender is accepted again."""
    await subscribe(resources, "ada@example.org", study="NCT05879978")
    smtp.reject_sender = "553 5.1.8 sender domain does not exist"
    await post_events(client, [new_study("NCT05879978")])
    worker = asyncio.create_task(run_worker(resources))
    await asyncio.sleep(0.8)
    assert smtp.messages == []
    (row,) = await rows(resources)
    assert row.status in ("pending", "sending")
    assert "sender refused: 553 5.1.8" in (row.last_error or "")
    smtp.reject_sender = None
    await asyncio.wait_for(worker, 20)
    assert per_address(smtp) == {"ada@example.org": 1}
    async with resources.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0
        assert set(await session.scalars(select(Subscription.status))) == {"confirmed"}


class TestGiveUp:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        # Long enough that the first attempts never give up on a slow machine; the clock is
        # then moved past it.
        return {"retry_give_up_after": 60.0, "retry_ladder": [30.0]}

    async def test_transient_failures_end_as_visible_failed_rows(
        self, client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
    ) -> None:
        await subscribe(resources, "slow@example.org", study="NCT05879978")
        smtp.reject["slow@example.org"] = "451 4.3.0 try later"
        event = new_study("NCT05879978")
        await post_events(client, [event])
        # The first attempt, by the jobs themselves: the worker would wait for the deferred retry.
        ctx = {"resources": resources}
        async with resources.sessions() as session:
            event_pk = await session.scalar(select(Event.id))
        await resources.redis.flushdb()
        assert event_pk is not None
        await fan_out_rows(resources, event_pk)
        (delivery,) = await rows(resources)
        await resources.redis.flushdb()
        await send_deliveries(ctx, [delivery.id])  # 451: pending, retry deferred by 30 s
        (delivery,) = await rows(resources)
        assert (delivery.status, delivery.attempts) == ("pending", 1)  # waits for its retry
        with time_machine.travel(utcnow() + timedelta(seconds=90), tick=True):
            await run_worker(resources)  # the deferred retry is due now
        (delivery,) = await rows(resources)
        assert delivery.status == "failed"
        assert delivery.attempts == 2
        assert (delivery.last_error or "").startswith("gave up after")
        resp = await client.get(
            f"/v1/admin/events/{event['event_id']}",
            headers={"Authorization": f"Bearer {resources.settings.admin_token}"},
        )
        assert (await resp.json())["failed"] == 1


async def test_redis_flushed_after_ingestion_the_sweep_delivers_each_mail_once(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    early = [f"early{i}@example.org" for i in range(3)]
    for email in early:
        await subscribe(r, email, study="NCT05844332")
    await post_events(client, [new_study("NCT05844332")])
    await run_worker(r)  # the first event is fully sent
    late = [f"late{i}@example.org" for i in range(4)]
    for email in late:
        await subscribe(r, email, study="NCT05879978")
    await post_events(client, [new_study("NCT05879978")])  # stored, fan-out queued…
    await r.redis.flushdb()  # …and lost
    await run_worker(r)
    assert per_address(smtp) == dict.fromkeys(early, 1)
    stale_after = r.settings.sweep_stale_after
    with time_machine.travel(utcnow() + timedelta(seconds=stale_after + 1), tick=True):
        await r.redis.enqueue_job("sweep")
        await run_worker(r)
    assert per_address(smtp) == dict.fromkeys(early + late, 1)
    # Flushed after the fan-out wrote delivery rows: their send jobs are lost, the rows are not.
    more = [f"more{i}@example.org" for i in range(2)]
    for email in more:
        await subscribe(r, email, study="NCT05835778")
    await post_events(client, [new_study("NCT05835778")])
    await r.redis.flushdb()
    async with r.sessions() as session:
        pk = await session.scalar(select(Event.id).where(Event.nct_id == "NCT05835778"))
    assert pk is not None
    await fanout_event({"resources": r}, pk)  # slices written, their send jobs lost
    await r.redis.flushdb()
    # Flushed after a slice's delivery rows were written: its send job is lost, the rows are not.
    rest = [f"rest{i}@example.org" for i in range(2)]
    for email in rest:
        await subscribe(r, email, study="NCT05913115")
    await post_events(client, [new_study("NCT05913115")])
    await r.redis.flushdb()
    async with r.sessions() as session:
        pk = await session.scalar(select(Event.id).where(Event.nct_id == "NCT05913115"))
    assert pk is not None
    assert len(await fan_out_rows(r, pk)) == 2
    await run_worker(r)
    assert per_address(smtp) == dict.fromkeys(early + late, 1)
    with time_machine.travel(utcnow() + timedelta(seconds=stale_after + 1), tick=True):
        assert (await sweep({"resources": r}))["slices"] == 1
        await run_worker(r)
    everyone = dict.fromkeys(early + late + more + rest, 1)
    assert per_address(smtp) == everyone
    # Later sweeps find nothing to do: sent stays sent.
    with time_machine.travel(utcnow() + timedelta(seconds=3 * stale_after), tick=True):
        await r.redis.enqueue_job("sweep")
        await run_worker(r)
    assert per_address(smtp) == everyone
    assert {d.status for d in await rows(r)} == {"sent"}


async def three_followers_event(r: Resources, client: TestClient[Any, Any], prefix: str) -> int:
    """A new study for three followers, stored, its jobs gone with Redis: the event's pk."""
    for i in range(3):
        await subscribe(r, f"{prefix}{i}@example.org", study="NCT05879978")
    await post_events(client, [new_study("NCT05879978")])
    await r.redis.flushdb()
    async with r.sessions() as session:
        event_pk: int | None = await session.scalar(select(Event.id))
    assert event_pk is not None
    return event_pk


async def sweep_once_stale(r: Resources) -> None:
    """A sweep and a worker run once claimed rows are older than the stale window."""
    with time_machine.travel(
        utcnow() + timedelta(seconds=r.settings.sweep_stale_after + 1), tick=True
    ):
        await r.redis.enqueue_job("sweep")
        await run_worker(r)


async def test_the_sweep_recovers_rows_claimed_by_a_dead_worker(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    event_pk = await three_followers_event(r, client, "d")
    await fan_out_rows(r, event_pk)
    await r.redis.flushdb()  # the send jobs die with their worker…
    claimed = await claim(r, [d.id for d in await rows(r)])  # …after claiming the rows
    assert len(claimed) == 3
    await run_worker(r)
    assert smtp.messages == []  # still claimed: nobody else may send them yet
    await sweep_once_stale(r)
    assert per_address(smtp) == {f"d{i}@example.org": 1 for i in range(3)}


async def one_slice(r: Resources, client: TestClient[Any, Any], prefix: str) -> tuple[int, int]:
    """An event with three followers fanned out into one slice whose job was lost:
    (event pk, slice id)."""
    event_pk = await three_followers_event(r, client, prefix)
    await fanout_event({"resources": r}, event_pk)
    await r.redis.flushdb()
    async with r.sessions() as session:
        (slice_id,) = (await session.scalars(select(FanoutSlice.id))).all()
    return event_pk, slice_id


async def back_to_pending(r: Resources, slice_id: int) -> None:
    """What the sweep does to a slice whose claim went stale."""
    async with r.sessions.begin() as session:
        await session.execute(
            update(FanoutSlice).where(FanoutSlice.id == slice_id).values(status="pending")
        )


async def test_a_slice_job_that_dies_mid_slice_leaves_it_to_the_sweep(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    """A slice's job takes its slice (sending) and writes each mail's row once, with its
    outcome. Killed after the relay accepted one mail and before any row was written: nobody
    else may take the slice until it is stale; then the sweep hands it out, the accepted mail
    is recorded from its receipt, and the other two are mailed once each."""
    r = resources
    event_pk, slice_id = await one_slice(r, client, "s")  # its job is taken by a worker…
    async with r.sessions() as session:
        event_at = await session.scalar(select(Event.received_at).where(Event.id == event_pk))
    assert event_at is not None
    taken = await take_slice(r, slice_id)  # …which takes it…
    assert taken is not None
    mails = taken.mails
    assert len(mails) == 3
    first = mails[0]  # …the relay accepts the first mail, the worker dies
    await r.receipts.landed(
        r.receipts.note(first.event_pk, first.subscriber_id, event_at, "<first@notify>")
    )
    assert await rows(r) == []  # no row before its outcome
    assert await take_slice(r, slice_id) is None  # a twin job finds it taken
    await r.redis.enqueue_job("sweep")
    await run_worker(r)
    assert smtp.messages == []  # claimed by the dead job: not yet
    await sweep_once_stale(r)
    async with r.sessions() as session:
        first_email = await session.scalar(
            select(Subscriber.email).where(Subscriber.id == first.subscriber_id)
        )
    others = {f"s{i}@example.org" for i in range(3)} - {first_email}
    assert per_address(smtp) == dict.fromkeys(others, 1)
    written = {d.subscriber_id: d for d in await rows(r)}
    assert {d.status for d in written.values()} == {"sent"}
    assert (written[first.subscriber_id].message_id, written[first.subscriber_id].attempts) == (
        "<first@notify>",
        2,
    )
    async with r.sessions() as session:
        status = await session.scalar(select(FanoutSlice.status).where(FanoutSlice.id == slice_id))
    assert status == "done"


class TestDroppedAfterData:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"retry_ladder": [0.5]}

    async def test_the_only_duplicate_is_a_drop_between_data_and_250(
        self, client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
    ) -> None:
        """Documented in the README: the server stored it, we never heard 250, we send again."""
        await subscribe(resources, "carol@example.org", study="NCT05879978")
        smtp.drop_after_data.add("carol@example.org")
        await post_events(client, [new_study("NCT05879978")])
        worker = asyncio.create_task(run_worker(resources))
        for _ in range(100):
            if smtp.messages:
                break
            await asyncio.sleep(0.02)
        smtp.drop_after_data.clear()
        await asyncio.wait_for(worker, 10)
        assert per_address(smtp) == {"carol@example.org": 2}
        (delivery,) = await rows(resources)
        assert (delivery.status, delivery.attempts) == ("sent", 2)


# --- SIGKILL mid-fan-out: real worker processes ----------------------------------------------


def worker_env(r: Resources, **extra: str) -> dict[str, str]:
    s = r.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        {
            "NOTIFIER_ENV": "production",
            "NOTIFIER_DATABASE_URL": s.database_url,
            "NOTIFIER_REDIS_URL": s.redis_url,
            "NOTIFIER_SMTP_URL": s.smtp_url,
            "NOTIFIER_PUBLIC_URL": s.public_url,
            "NOTIFIER_SECRET_KEYS": ",".join(s.secret_keys),
            "NOTIFIER_EVENT_SECRETS": ",".join(s.event_secrets),
            "NOTIFIER_ADMIN_TOKEN": s.admin_token,
            "NOTIFIER_MAIL_FROM": s.mail_from,
            "NOTIFIER_QUEUE_NAME": s.queue_name,
            "NOTIFIER_WORKER_METRICS_BIND": "",
            "NOTIFIER_METRICS_BIND": "",
            "NOTIFIER_LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


async def start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifier",
        "worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@pytest.mark.postgres_only
@pytest.mark.slow
async def test_a_worker_killed_mid_fanout_then_restarted_mails_everyone(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    n, batch, max_jobs = 1000, 10, 4
    async with r.sessions.begin() as session:
        ids = (
            await session.scalars(
                insert(Subscriber).returning(Subscriber.id),
                [
                    {
                        "email": f"k{i:04d}@example.org",
                        "email_hash": r.email_hash(f"k{i:04d}@example.org"),
                    }
                    for i in range(n)
                ],
            )
        ).all()
        await session.execute(
            insert(Subscription),
            [
                {
                    "subscriber_id": sid,
                    "kind": "condition",
                    "match_key": "cond:sclc",
                    "label": "SCLC",
                    "status": "confirmed",
                    "confirmed_at": utcnow(),
                }
                for sid in ids
            ],
        )
    env = worker_env(
        r,
        NOTIFIER_FANOUT_PAGE_SIZE="20",
        NOTIFIER_SEND_BATCH_SIZE=str(batch),
        NOTIFIER_WORKER_MAX_JOBS=str(max_jobs),
        NOTIFIER_SWEEP_STALE_AFTER="1",
        NOTIFIER_RETRY_LADDER="0.05,0.1,0.2",
        NOTIFIER_SHUTDOWN_GRACE="0",
    )
    event = new_study("NCT05879978")
    await post_events(client, [event])
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = await start_worker(env)
    # A cold `python -m notifier worker` takes a few seconds on a busy 2-core machine.
    while len(smtp.messages) < 50 and loop.time() - started < 60:  # noqa: ASYNC110  # polls SMTP
        await asyncio.sleep(0.01)
    assert smtp.messages, "the first worker never sent anything"
    first.send_signal(signal.SIGKILL)
    await first.wait()
    killed_after = loop.time() - started
    received_at_kill = len(smtp.messages)
    async with r.sessions() as session:
        at_kill = await session.scalar(select(Event.status))
        rows_at_kill = await session.scalar(select(func.count()).select_from(Delivery))
    second = await start_worker(env)
    try:
        await asyncio.sleep(1.2)  # the dead worker's claims become stale (1 s here)
        await r.redis.enqueue_job("sweep")
        while loop.time() - started < 120:
            async with r.sessions() as session:
                sent = await session.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.status == "sent")
                )
                status = await session.scalar(select(Event.status))
            if sent == n and status == "fanned_out":
                break
            await asyncio.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 10)
    counts = Counter(m.rcpt_to for m in smtp.messages)
    duplicates = sum(c - 1 for c in counts.values())
    print(  # noqa: T201  # the figure the issue asks this test to report
        f"\nSIGKILL after {received_at_kill} mails (event {at_kill}, {rows_at_kill} delivery rows);"
        f" after restart: {len(counts)}/{n} addresses, {duplicates} duplicate(s);"
        f" killed at {killed_after:.1f} s, done at {loop.time() - started:.1f} s"
    )
    assert len(counts) == n, f"{n - len(counts)} subscriber(s) never got the mail"
    # Per open connection, only the message whose 250 was on its way when the process died and
    # the one before it, if its receipt was still on its way to Redis (notifier/data/receipts.py).
    assert duplicates <= 2 * max_jobs


async def test_redis_down_at_ingestion_still_stores_and_answers_202(
    resources: Resources, smtp: RecordingSMTP
) -> None:
    """The event is committed before the enqueue; with Redis cut off, the sweep fans it out."""
    r = resources
    await subscribe(r, "ada@example.org", study="NCT05879978")
    target = urlsplit(r.settings.redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    cut = r.settings.model_copy(
        update={"redis_url": r.settings.redis_url.replace(f":{target.port}/", f":{proxy.port}/")}
    )
    try:
        async with (
            open_resources(cut) as cut_resources,
            TestClient(TestServer(create_app(cut, cut_resources))) as cut_client,
        ):
            await proxy.stop()
            assert await post_events(cut_client, [new_study("NCT05879978")]) == {
                "accepted": 1,
                "duplicates": 0,
            }
    finally:
        await proxy.stop()
    assert await r.redis.queued_jobs(queue_name=r.settings.queue_name) == []
    with time_machine.travel(
        utcnow() + timedelta(seconds=r.settings.sweep_stale_after + 1), tick=True
    ):
        await r.redis.enqueue_job("sweep")
        await run_worker(r)
    assert per_address(smtp) == {"ada@example.org": 1}


async def test_a_lapsed_slice_job_cannot_mark_done_the_run_that_took_over(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    """The sweep handed a stalled job's slice to another job: the stalled one, waking, may
    record what it sent, but neither renews the new run's claim nor marks the slice done
    under it (a later death of the new run would otherwise lose its unsent mails)."""
    r = resources
    _, slice_id = await one_slice(r, client, "l")
    first = await take_slice(r, slice_id)
    assert first is not None
    await back_to_pending(r, slice_id)  # the sweep, once the claim is stale
    second = await take_slice(r, slice_id)
    assert second is not None
    assert (first.claim.run, second.claim.run) == (1, 2)
    assert [m.attempts for m in second.mails] == [2, 2, 2]  # receipts are read for them

    async def status() -> str | None:
        async with r.sessions() as session:
            return await session.scalar(
                select(FanoutSlice.status).where(FanoutSlice.id == slice_id)
            )

    await record(r, [], {}, [], slice_=first.claim, final=True)
    assert await status() == "sending"  # still the second run's
    await record(r, [], {}, [], slice_=second.claim, final=True)
    assert await status() == "done"


async def test_progress_counts_a_slice_being_sent_as_pending(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    """While a slice's job sends (its rows written as outcomes come), the progress answer
    counts its unwritten mails as pending, never a mail twice; the same once the sweep has put
    a half-written slice back to pending."""
    r = resources
    event_pk, slice_id = await one_slice(r, client, "p")
    async with r.sessions() as session:
        event_id = await session.scalar(select(Event.event_id).where(Event.id == event_pk))
    assert event_id is not None
    taken = await take_slice(r, slice_id)
    assert taken is not None
    claim_, mails = taken.claim, taken.mails

    async def counts() -> tuple[int, int]:
        async with r.sessions() as session:
            found = await events.progress(session, event_id)
        assert found is not None
        return found["sent"], found["pending"]

    assert await counts() == (0, 3)
    sent = Outcome(mails[0], DeliveryStatus.SENT, message_id="<one@notify>")
    await record(r, [sent], {}, [], slice_=claim_)
    assert await counts() == (1, 2)
    await back_to_pending(r, slice_id)  # the sweep puts it back
    assert await counts() == (1, 2)
