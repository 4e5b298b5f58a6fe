"""Daily and weekly digests on real PostgreSQL/SQLite, Redis, arq and SMTP; only the clock moves."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import time_machine
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.core.signing import header_value
from notifier.data import queries
from notifier.data.models import Delivery, Event, Subscriber, Subscription
from notifier.jobs.digests import digest_tick, period_start
from notifier.ops.sample_events import build_event, earlier_version, load_records, with_fewer_sites
from notifier.queue import Cron
from notifier.resources import Resources
from notifier.settings import Settings
from notifier.worker import cron_jobs
from tests.conftest import EVENT_SECRETS, run_worker
from tests.smtp_server import RecordingSMTP

RECORDS = load_records()
NCT = "NCT05826366"  # 32 sites, most of them in Japan
EMAIL = "dana@example.org"
MONDAY = datetime(2025, 6, 2, tzinfo=UTC)  # a Monday


def three_events() -> list[dict[str, Any]]:
    """Three material changes to one real study: status, new sites, completion date."""
    record = RECORDS[NCT]
    status = build_event(
        record,
        "status_changed",
        previous=earlier_version(record, overallStatus="NOT_YET_RECRUITING"),
    )
    sites = build_event(
        record, "recruitment_sites_changed", previous=with_fewer_sites(record, "Japan", 3)
    )
    dates = build_event(
        record,
        "dates_changed",
        previous=earlier_version(
            record, completionDateStruct={"date": "2026-03", "type": "ESTIMATED"}
        ),
    )
    for index, ev in enumerate((status, sites, dates)):
        ev["event_id"] = f"{ev['event_id'][:60]}{index:04d}"
    return [status, sites, dates]


@contextmanager
def at(moment: datetime) -> Iterator[None]:
    # tick=True: arq's deferred retries need the clock to move.
    with time_machine.travel(moment, tick=True):
        yield


async def subscribe(
    r: Resources,
    *,
    email: str = EMAIL,
    label: str = NCT,
    frequency: str = "daily",
    timezone: str = "UTC",
    discreet: bool = False,
) -> Subscription:
    async with r.sessions.begin() as session:
        subscriber = await queries.subscriber_by_email(session, email)
        if subscriber is None:
            subscriber = Subscriber(email=email, email_hash=r.email_hash(email), timezone=timezone)
            session.add(subscriber)
            await session.flush()
        sub = Subscription(
            subscriber_id=subscriber.id,
            kind="study",
            match_key=f"study:{label}",
            label=label,
            status="confirmed",
            frequency=frequency,
            discreet=discreet,
            confirmed_at=datetime.now(UTC),
        )
        session.add(sub)
    return sub


async def post_events(
    client: TestClient[Any, Any], events: list[dict[str, Any]], *, duplicates: int = 0
) -> None:
    body = json.dumps({"events": events}).encode()
    response = await client.post(
        "/v1/events",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Notifier-Signature": header_value(body, EVENT_SECRETS[0], int(time.time())),
        },
    )
    assert response.status == 202, await response.text()
    answer = await response.json()
    assert answer == {"accepted": len(events) - duplicates, "duplicates": duplicates}


async def statuses(r: Resources) -> list[str]:
    async with r.sessions() as session:
        return sorted(await session.scalars(select(Delivery.status)))


async def tick(r: Resources) -> int:
    enqueued = await digest_tick({"resources": r})
    await run_worker(r)
    return enqueued


def links(text: str) -> list[str]:
    return re.findall(r"https://\S+", text)


# -- periods ----------------------------------------------------------------------------------


def test_periods_end_at_local_midnight_and_local_monday() -> None:
    now = datetime(2025, 6, 4, 15, 30, tzinfo=UTC)  # Wednesday
    assert period_start(now, "UTC", "daily") == datetime(2025, 6, 4, tzinfo=UTC)
    assert period_start(now, "UTC", "weekly") == datetime(2025, 6, 2, tzinfo=UTC)
    # New York is UTC-4 in June: local midnight is 04:00 UTC.
    assert period_start(now, "America/New_York", "daily") == datetime(2025, 6, 4, 4, tzinfo=UTC)
    # Tokyo is already on Thursday.
    assert period_start(now, "Asia/Tokyo", "daily") == datetime(2025, 6, 4, 15, tzinfo=UTC)
    assert period_start(now, "Asia/Kolkata", "daily") == datetime(2025, 6, 3, 18, 30, tzinfo=UTC)
    assert period_start(now, "Asia/Tokyo", "weekly") == datetime(2025, 6, 1, 15, tzinfo=UTC)
    # An unknown or empty zone is UTC, never an error.
    assert period_start(now, "Mars/Olympus", "daily") == datetime(2025, 6, 4, tzinfo=UTC)
    assert period_start(now, "", "weekly") == datetime(2025, 6, 2, tzinfo=UTC)
    # The day after Europe's spring-forward: midnight has the summer offset again.
    spring = datetime(2025, 3, 31, 12, tzinfo=UTC)
    start = period_start(spring, "Europe/Berlin", "daily")
    assert start.astimezone(ZoneInfo("Europe/Berlin")).hour == 0
    assert start == datetime(2025, 3, 30, 22, tzinfo=UTC)
    # Instant has no period: anything held is due now.
    assert period_start(now, "UTC", "instant") == now


def test_the_tick_is_an_hourly_cron_on_the_hour(settings: Settings) -> None:
    [cron] = [c for c in cron_jobs(settings) if c.name == Cron.DIGEST_TICK]
    assert cron.minute == 0
    assert cron.unique


# -- the canonical flows ----------------------------------------------------------------------


async def test_daily_subscriber_gets_one_digest_with_three_items_and_none_on_an_empty_day(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    with at(MONDAY + timedelta(hours=9)):
        await subscribe(r, frequency="daily")
        await post_events(client, three_events())
        await run_worker(r)
        assert smtp.messages == []  # held for the digest
        assert await statuses(r) == ["held", "held", "held"]
    with at(MONDAY + timedelta(hours=23)):
        assert await tick(r) == 0  # the day has not ended
        assert smtp.messages == []
    with at(MONDAY + timedelta(days=1, seconds=5)):
        assert await tick(r) == 1
        assert await tick(r) == 0  # a rerun of the same period sends nothing more
    assert len(smtp.messages) == 1
    msg = smtp.messages[0].message
    assert msg["To"] == EMAIL
    assert msg["Subject"].startswith("Your daily summary: NCT05826366 ")
    assert msg["Subject"].endswith(" and 2 more")
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for needle in (
        "Not yet recruiting → Recruiting",
        "3 new sites in Japan",
        "Completion date",
        "(NCT05826366).",  # You follow “Title” (NCT…).
        "https://clinicaltrials.gov/study/NCT05826366",
    ):
        assert needle in text
        assert needle in html
    assert "1. " in text
    assert "3. " in text
    assert "4. " not in text
    # Every item carries its own unsubscribe link, and the header one-click link works.
    unsubscribe = [u for u in links(text) if "/v1/unsubscribe/" in u]
    assert len(unsubscribe) == 3
    assert msg["List-Unsubscribe"] == f"<{unsubscribe[0]}>"
    async with r.sessions() as session:
        rows = list(await session.scalars(select(Delivery)))
        subscriber = await session.scalar(select(Subscriber))
    assert {d.status for d in rows} == {"sent"}
    assert {d.message_id for d in rows} == {msg["Message-ID"]}
    assert subscriber is not None
    assert subscriber.last_digest_at == MONDAY + timedelta(days=1)
    # An empty day: nothing at all.
    with at(MONDAY + timedelta(days=2, minutes=1)):
        assert await tick(r) == 0
    assert len(smtp.messages) == 1
    # The one-click link from the digest unsubscribes (RFC 8058 body).
    path = unsubscribe[0].removeprefix(r.settings.public_base)
    response = await client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status == 200
    async with r.sessions() as session:
        assert await session.scalar(select(Subscription.status)) == "unsubscribed"


async def test_instant_subscriber_gets_three_mails(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    with at(MONDAY + timedelta(hours=9)):
        await subscribe(r, frequency="instant")
        await post_events(client, three_events())
        await run_worker(r)
    assert len(smtp.messages) == 3
    assert len({m.message["Message-ID"] for m in smtp.messages}) == 3
    assert await statuses(r) == ["sent", "sent", "sent"]
    with at(MONDAY + timedelta(days=1, seconds=5)):
        assert await tick(r) == 0  # nothing held: no digest on top
    assert len(smtp.messages) == 3


async def test_digest_follows_the_subscribers_timezone(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    # 22:00 UTC on Monday is 18:00 in New York (UTC-4 in June).
    with at(MONDAY + timedelta(hours=22)):
        await subscribe(r, frequency="daily", timezone="America/New_York")
        await post_events(client, three_events()[:1])
        await run_worker(r)
    with at(MONDAY + timedelta(days=1, minutes=1)):  # UTC's day ended, New York's (20:01) not
        assert await tick(r) == 0
    with at(MONDAY + timedelta(days=1, hours=4, minutes=1)):  # 00:01 Tuesday in New York
        assert await tick(r) == 1
    assert len(smtp.messages) == 1
    async with r.sessions() as session:
        subscriber = await session.scalar(select(Subscriber))
    assert subscriber is not None
    assert subscriber.last_digest_at == MONDAY + timedelta(days=1, hours=4)


async def test_weekly_subscriber_waits_for_monday(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    with at(MONDAY + timedelta(days=2, hours=10)):  # Wednesday
        await subscribe(r, frequency="weekly")
        await post_events(client, three_events()[:2])
        await run_worker(r)
    for day in (3, 4, 6):  # Thursday, Friday, Sunday: no digest
        with at(MONDAY + timedelta(days=day, minutes=1)):
            assert await tick(r) == 0
    with at(MONDAY + timedelta(days=7, minutes=1)):
        assert await tick(r) == 1
    assert len(smtp.messages) == 1
    msg = smtp.messages[0].message
    assert msg["Subject"].startswith("Your weekly summary: ")
    assert "once a week" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_discreet_digest_names_nothing_in_subject_or_preview(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    with at(MONDAY + timedelta(hours=9)):
        await subscribe(r, frequency="daily", discreet=True)
        await post_events(client, three_events())
        await run_worker(r)
    with at(MONDAY + timedelta(days=1, minutes=1)):
        await tick(r)
    msg = smtp.messages[0].message
    assert msg["Subject"] == "Your daily summary: 3 updates on studies you follow"
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    preheader = re.search(r'<div style="display:none[^>]*>(.*?)</div>', html, re.S)
    assert preheader is not None
    assert "NCT" not in preheader.group(1)
    assert "Recruiting" not in preheader.group(1)
    # The body still says everything.
    assert "Not yet recruiting → Recruiting" in html


async def test_suppression_and_unsubscribe_are_rechecked_before_the_digest(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    other = "erin@example.org"
    with at(MONDAY + timedelta(hours=9)):
        await subscribe(r, frequency="daily")
        await subscribe(r, email=other, frequency="daily")
        await post_events(client, three_events())
        await run_worker(r)
    assert await statuses(r) == ["held"] * 6
    async with r.sessions.begin() as session:
        await queries.suppress(session, r.email_hash(EMAIL), "complaint")
        erin = await queries.subscriber_by_email(session, other)
        assert erin is not None
        sub = await session.scalar(
            select(Subscription).where(Subscription.subscriber_id == erin.id)
        )
        assert sub is not None
        sub.paused = True
    with at(MONDAY + timedelta(days=1, minutes=1)):
        await tick(r)
    assert smtp.messages == []
    assert await statuses(r) == ["skipped"] * 6


async def test_smtp_outage_loses_nothing_and_sends_one_digest(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    with at(MONDAY + timedelta(hours=9)):
        await subscribe(r, frequency="daily")
        await post_events(client, three_events())
        await run_worker(r)
    smtp.reject[EMAIL] = ["451 4.3.0 try later", "451 4.3.0 try later"]
    with at(MONDAY + timedelta(days=1, minutes=1)):
        await tick(r)  # two refusals, then the ladder's third try is accepted
    assert len(smtp.messages) == 1
    assert await statuses(r) == ["sent"] * 3
    # A hard outage past the ladder: items stay held and the next tick sends them.
    with at(MONDAY + timedelta(days=1, hours=9)):
        await post_events(client, [dict(three_events()[0], event_id="f" * 64)])
        await run_worker(r)
    smtp.reject[EMAIL] = ["451 4.3.0 down"] * (len(r.settings.retry_ladder) + 1)
    with at(MONDAY + timedelta(days=2, minutes=1)):
        await tick(r)
        assert len(smtp.messages) == 1
        assert sorted(await statuses(r)) == ["held", "sent", "sent", "sent"]
    with at(MONDAY + timedelta(days=2, hours=1, minutes=1)):
        await tick(r)
    assert len(smtp.messages) == 2
    assert await statuses(r) == ["sent"] * 4


async def test_permanent_refusal_fails_the_items_and_5_1_suppresses(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    with at(MONDAY + timedelta(hours=9)):
        await subscribe(r, frequency="daily")
        await post_events(client, three_events()[:2])
        await run_worker(r)
    smtp.reject[EMAIL] = "550 5.1.1 no such user"
    with at(MONDAY + timedelta(days=1, minutes=1)):
        await tick(r)
    assert smtp.messages == []
    assert await statuses(r) == ["failed", "failed"]
    async with r.sessions() as session:
        assert await queries.is_suppressed(session, r.email_hash(EMAIL))


async def test_a_claim_left_by_a_dead_worker_is_released(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    with at(MONDAY + timedelta(hours=9)):
        await subscribe(r, frequency="daily")
        await post_events(client, three_events()[:1])
        await run_worker(r)
    with at(MONDAY + timedelta(days=1, minutes=1)):
        async with r.sessions.begin() as session:
            delivery = await session.scalar(select(Delivery))
            assert delivery is not None
            # What a worker killed between claim and send leaves behind.
            delivery.status, delivery.next_attempt_at = "digesting", datetime.now(UTC)
        await tick(r)
        assert smtp.messages == []  # a live claim is left alone
    with at(MONDAY + timedelta(days=1, hours=1, minutes=1)):
        await tick(r)
    assert len(smtp.messages) == 1
    assert await statuses(r) == ["sent"]


async def test_items_are_still_one_per_event(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    r = resources
    events = three_events()
    with at(MONDAY + timedelta(hours=9)):
        await subscribe(r, frequency="daily")
        await post_events(client, events)
        await run_worker(r)
        await post_events(client, events, duplicates=3)  # the pipeline retried
        await run_worker(r)
    with at(MONDAY + timedelta(days=1, minutes=1)):
        await tick(r)
    text = smtp.messages[0].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.count("(NCT05826366).") == 3  # "You follow “Title” (NCT…)." per item
    async with r.sessions() as session:
        assert len(list(await session.scalars(select(Event)))) == 3


async def test_items_not_due_yet_do_not_hold_back_due_ones(
    resources: Resources, smtp: RecordingSMTP
) -> None:
    """Found in review: the digest read the 100 oldest held items and only then looked for due
    ones, so a busy weekly subscription could hold a daily one back until Monday."""
    from notifier.jobs import digests
    from tests.factories import make_delivery, make_event, make_subscription

    r = resources
    wednesday = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
    async with r.sessions.begin() as session:
        weekly = await make_subscription(
            session,
            r,
            email="busy@example.org",
            kind="condition",
            label="Lung Neoplasms",
            frequency="weekly",
        )
        daily = await make_subscription(
            session, r, email="busy@example.org", label="NCT02856893", frequency="daily"
        )
        # Three new studies filed under Lung Neoplasms (weekly: due on Monday), then one
        # change of the followed study (daily: due at midnight), all held since Wednesday.
        items = [await make_event(session, event_id=f"w{n}") for n in range(3)]
        items.append(await make_event(session, event_id="d1", nct_id="NCT02856893"))
        for n, event in enumerate(items):
            delivery = await make_delivery(
                session, event=event, subscriber_id=weekly.subscriber_id, status="held"
            )
            delivery.created_at = wednesday + timedelta(minutes=n)
    assert weekly.subscriber_id == daily.subscriber_id
    old = digests.MAX_ITEMS
    digests.MAX_ITEMS = 2  # the first page holds only weekly items
    try:
        with time_machine.travel(wednesday + timedelta(days=1), tick=False):
            assert await digests.send_digest({"resources": r}, daily.subscriber_id) == "sent"
    finally:
        digests.MAX_ITEMS = old
    assert [m.rcpt_to for m in smtp.messages] == ["busy@example.org"]
    async with r.sessions() as session:
        statuses = dict(
            (await session.execute(select(Event.event_id, Delivery.status).join(Delivery))).all()
        )
    assert statuses == {"w0": "held", "w1": "held", "w2": "held", "d1": "sent"}
