"""`notifier send-test|replay|stats` run through main() against the test database, Redis, SMTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from notifier.__main__ import main
from notifier.clock import utcnow
from notifier.data.models import Delivery, Event, FanoutSlice, RejectedEvent, Subscription
from notifier.data.queries import suppress
from notifier.resources import Resources
from notifier.settings import Settings
from tests.conftest import run_worker
from tests.events_factory import status_change
from tests.factories import make_delivery, make_event, make_subscription
from tests.smtp_server import RecordingSMTP

NCT = "NCT05879978"


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment an operator would set, pointing at this test's services."""
    values = {
        "NOTIFIER_ENV": "production",
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_REDIS_URL": settings.redis_url,
        "NOTIFIER_SMTP_URL": settings.smtp_url,
        "NOTIFIER_SMTP_TIMEOUT": "5",
        "NOTIFIER_PUBLIC_URL": settings.public_url,
        "NOTIFIER_SECRET_KEYS": ",".join(settings.secret_keys),
        "NOTIFIER_EVENT_SECRETS": ",".join(settings.event_secrets),
        "NOTIFIER_ADMIN_TOKEN": settings.admin_token,
        "NOTIFIER_MAIL_FROM": settings.mail_from,
        "NOTIFIER_QUEUE_NAME": settings.queue_name,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    # main() installs the JSON log handler on the root logger: put pytest's back afterwards.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cli(cli_env: None, capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(capsys)


class CLI:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    async def __call__(self, *argv: str) -> Ran:
        """main() in a thread: it runs its own event loop, as it does from a shell."""
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        captured = self.capsys.readouterr()
        return Ran(code, captured.out, captured.err)


# ---- send-test -----------------------------------------------------------------------------------


async def test_send_test_mails_through_the_relay_and_prints_the_message_id(
    cli: CLI, resources: Resources, smtp: RecordingSMTP
) -> None:
    ran = await cli("send-test", "Ops@Example.org")
    assert ran.code == 0, ran
    found = re.search(r"sent: (<[0-9a-f]+@notify\.example\.org>) to Ops@example\.org", ran.out)
    assert found, ran.out
    assert "sending to Ops@example.org via SMTPConfig(smtp://127.0.0.1:" in ran.err
    [received] = smtp.messages
    assert received.rcpt_to == "Ops@example.org"
    assert received.mail_from == "alerts@notify.example.org"
    message = received.message
    assert message["Message-ID"] == found.group(1)
    assert message["Subject"] == "Test message from the clinical-trials site"
    assert message["X-Notifier-Test"] == "yes"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["List-Unsubscribe"] is None  # not a list mail
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert f"Relay:       127.0.0.1:{smtp.port}" in text.get_content()
    assert found.group(1) in text.get_content()
    assert html.get_content().startswith("<!doctype html>")  # the notification layout
    assert f"&lt;{found.group(1)[1:-1]}&gt;" in html.get_content()  # escaped in HTML


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ("550 5.1.1 no such user", "not sent: refused permanently: 550 5.1.1 no such user"),
        ("451 4.3.0 try later", "not sent: deferred (temporary failure): 451 4.3.0 try later"),
    ],
)
async def test_send_test_reports_a_refusal(
    cli: CLI, resources: Resources, smtp: RecordingSMTP, answer: str, says: str
) -> None:
    smtp.reject["gone@example.org"] = answer
    ran = await cli("send-test", "gone@example.org")
    assert ran.code == 1
    assert says in ran.out
    assert ("suppression list" in ran.out) == answer.startswith("550 5.1.")
    assert smtp.messages == []
    async with resources.sessions() as session:  # a test mail never suppresses anyone
        assert await session.scalar(select(func.count()).select_from(Subscription)) == 0


async def test_send_test_with_the_relay_down(
    cli: CLI, resources: Resources, smtp: RecordingSMTP
) -> None:
    await smtp.stop()
    ran = await cli("send-test", "ops@example.org")
    assert ran.code == 1
    assert "not sent: cannot talk to the SMTP relay" in ran.out


async def test_send_test_refuses_a_bad_or_suppressed_address(
    cli: CLI, resources: Resources, smtp: RecordingSMTP
) -> None:
    ran = await cli("send-test", "not an address")
    assert ran.code == 2
    assert "not a valid address" in ran.err

    async with resources.sessions.begin() as session:
        await suppress(session, resources.email_hash("ops@example.org"), "complaint")
    ran = await cli("send-test", "ops@example.org")
    assert ran.code == 1
    assert "is on the suppression list (complaint); --force sends anyway" in ran.out
    assert smtp.transactions == 0

    ran = await cli("send-test", "ops@example.org", "--force")
    assert ran.code == 0
    assert len(smtp.to("ops@example.org")) == 1


# ---- replay --------------------------------------------------------------------------------------


async def _deliveries(resources: Resources) -> list[tuple[int, str]]:
    async with resources.sessions() as session:
        rows = await session.execute(
            select(Delivery.subscriber_id, Delivery.status).order_by(Delivery.id)
        )
        return [(int(sid), str(status)) for sid, status in rows.all()]


async def _ingest(resources: Resources, event: dict[str, object]) -> None:
    await resources.redis.enqueue_job("ingest_trial_event", event)
    await run_worker(resources)


async def test_replay_never_mails_anyone_twice_and_reaches_who_matches_now(
    cli: CLI, resources: Resources, smtp: RecordingSMTP
) -> None:
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email="ada@example.org", label=NCT)
        late = await make_subscription(
            session, resources, email="bob@example.org", label=NCT, status="pending"
        )
    event = status_change(NCT, "RECRUITING", "COMPLETED")
    await _ingest(resources, event)
    assert len(smtp.to("ada@example.org")) == 1
    assert smtp.to("bob@example.org") == []

    # Bob confirms after the event went out; a replay reaches him, and only him.
    async with resources.sessions.begin() as session:
        await session.execute(
            update(Subscription).where(Subscription.id == late.id).values(status="confirmed")
        )
    for _ in range(2):  # replaying twice is as safe as once
        ran = await cli("replay", str(event["event_id"]))
        assert ran.code == 0, ran
        assert f"event {event['event_id']} ({NCT}, status_changed): was fanned_out" in ran.out
        async with resources.sessions() as session:
            replayed = await session.scalar(select(Event))
        assert replayed is not None
        assert (replayed.status, replayed.fanout_cursor) == ("received", 0)
        await run_worker(resources)

    assert len(smtp.to("ada@example.org")) == 1
    assert len(smtp.to("bob@example.org")) == 1
    assert [status for _, status in await _deliveries(resources)] == ["sent", "sent"]
    async with resources.sessions() as session:
        done = await session.scalar(select(Event))
    assert done is not None
    assert (done.status, done.matched) == ("fanned_out", 2)


async def test_replay_re_enqueues_due_pending_deliveries(
    cli: CLI, resources: Resources, smtp: RecordingSMTP
) -> None:
    """A delivery whose job was lost (Redis flushed) goes out on replay, once."""
    async with resources.sessions.begin() as session:
        sub = await make_subscription(session, resources, email="ada@example.org", label=NCT)
        event = await make_event(session, nct_id=NCT, change_kind="new_study", status="received")
        await make_delivery(session, event=event, subscriber_id=sub.subscriber_id)
        event_id = event.event_id
    ran = await cli("replay", event_id)
    assert ran.code == 0
    assert "1 due pending deliveries re-enqueued" in ran.out
    await run_worker(resources)
    assert len(smtp.to("ada@example.org")) == 1
    assert await _deliveries(resources) == [(sub.subscriber_id, "sent")]


async def test_replay_wait_follows_the_fan_out(
    cli: CLI, resources: Resources, smtp: RecordingSMTP
) -> None:
    async with resources.sessions.begin() as session:
        for n in range(3):
            await make_subscription(session, resources, email=f"r{n}@example.org", label=NCT)
        event = await make_event(session, nct_id=NCT, change_kind="new_study")
        event_id = event.event_id
    running = asyncio.ensure_future(cli("replay", event_id, "--wait", "--timeout", "30"))
    for _ in range(200):  # until the replay has enqueued its fan-out
        if await resources.redis.zcard(resources.settings.queue_name):
            break
        await asyncio.sleep(0.05)
    await run_worker(resources)
    ran = await running
    assert ran.code == 0, ran
    assert "done: fanned_out, 3 sent, 0 failed" in ran.out
    assert "received: matched 0, sent 0, pending 0" in ran.err  # progress on the way
    assert len(smtp.messages) == 3


async def test_replay_of_an_unknown_event(cli: CLI, resources: Resources) -> None:
    ran = await cli("replay", "no-such-event")
    assert ran.code == 1
    assert "no stored event with event_id 'no-such-event'" in ran.out


# ---- stats ---------------------------------------------------------------------------------------


async def test_stats_counts_everything_and_the_queue(cli: CLI, resources: Resources) -> None:
    async with resources.sessions.begin() as session:
        ada = await make_subscription(session, resources, email="ada@example.org", label=NCT)
        await make_subscription(session, resources, email="ada@example.org", label="NCT02856893")
        await make_subscription(session, resources, email="bob@example.org", status="pending")
        await make_subscription(session, resources, email="cy@example.org", label=NCT, paused=True)
        await make_subscription(session, resources, email="di@example.org", status="unsubscribed")
        first = await make_event(session, status="fanned_out")
        await make_event(session, status="immaterial")
        await make_delivery(session, event=first, subscriber_id=ada.subscriber_id, status="sent")
        second = await make_event(session, status="received")
        await make_delivery(session, event=second, subscriber_id=ada.subscriber_id)
        session.add(FanoutSlice(event_pk=second.id, after_id=0, last_id=9, size=3))
        await suppress(session, resources.email_hash("eve@example.org"), "hard_bounce")
        session.add(RejectedEvent(source="queue", error="bad", payload="{}"))
    await resources.redis.enqueue_job("sweep")
    await resources.redis.enqueue_job("sweep", _job_id="later", _defer_by=timedelta(hours=1))

    ran = await cli("stats", "--json")
    assert ran.code == 0, ran
    assert json.loads(ran.out) == {
        "subscribers": 4,
        "subscriptions": {"pending": 1, "confirmed": 3, "unsubscribed": 1},
        "subscriptions_paused": 1,
        "events": {"received": 1, "fanning_out": 0, "fanned_out": 1, "immaterial": 1},
        "events_rejected": 1,
        "events_compacted": 0,
        "deliveries": {
            "pending": 1,
            "sending": 0,
            "sent": 1,
            "failed": 0,
            "skipped": 0,
            "held": 0,
        },
        "fanout_slices": {"pending": 1, "sending": 0, "done": 0},
        "suppressions": {"hard_bounce": 1},
        "queue": {"depth": 2, "ready": 1, "deferred": 1},
        "workers": {"alive": 0, "last_job_at": None, "workers": []},
    }
    for section in ("subscribers", "subscriptions", "events", "deliveries"):
        assert f"counting {section} …" in ran.err

    ran = await cli("stats")
    assert ran.code == 0
    assert "subscribers     4\n" in ran.out
    assert "workers         alive 0 · last job none\n" in ran.out
    assert "subscriptions   pending 1 · confirmed 3 · unsubscribed 1 (paused 1)" in ran.out
    assert "fan-out slices  pending 1 · sending 0 · done 0" in ran.out
    assert "queue           depth 2 · ready 1 · deferred 1" in ran.out


async def test_commands_say_when_a_service_is_down(
    cli: CLI, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFIER_REDIS_URL", "redis://127.0.0.1:1/0")
    ran = await cli("stats")
    assert ran.code == 2
    assert "Redis not reachable" in ran.err

    monkeypatch.setenv("NOTIFIER_REDIS_URL", resources.settings.redis_url)
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    ran = await cli("stats")
    assert ran.code == 2
    assert "not reachable" in ran.err
    assert "Traceback" not in ran.err


async def test_replay_leaves_retries_waiting_for_their_time(
    cli: CLI, resources: Resources, smtp: RecordingSMTP
) -> None:
    """A row waiting for a retry keeps its backoff: its own deferred job wakes it."""
    async with resources.sessions.begin() as session:
        sub = await make_subscription(session, resources, email="ada@example.org", label=NCT)
        event = await make_event(session, nct_id=NCT, change_kind="new_study")
        delivery = await make_delivery(session, event=event, subscriber_id=sub.subscriber_id)
        delivery.next_attempt_at = utcnow() + timedelta(hours=1)
        event_id = event.event_id
    ran = await cli("replay", event_id)
    assert "0 due pending deliveries re-enqueued" in ran.out
    await run_worker(resources)
    assert smtp.transactions == 0
    assert await _deliveries(resources) == [(sub.subscriber_id, "pending")]
