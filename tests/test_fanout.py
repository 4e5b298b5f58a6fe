"""Fan-out and sending end to end: POST /v1/events -> arq worker -> aiosmtpd -> follow the links."""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import timedelta
from email.message import EmailMessage
from html import escape as html_escape
from typing import Any

import pytest
import time_machine
from aiohttp.test_utils import TestClient
from sqlalchemy import delete, select, update

from notifier.clock import utcnow
from notifier.data.models import Delivery, Event, FanoutSlice, Subscriber, Subscription
from notifier.data.queries import suppress
from notifier.jobs.fanout import fanout_event, materialise
from notifier.mail.labels import NAME_MAX, shorten
from notifier.queue import enqueue_slices
from notifier.resources import Resources
from tests.conftest import PUBLIC_URL, run_worker
from tests.events_factory import (
    fan_out_rows,
    new_study,
    post_events,
    status_change,
    subscribe,
)
from tests.smtp_server import RecordingSMTP


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content())


async def deliveries(r: Resources) -> list[Delivery]:
    async with r.sessions() as session:
        return list(await session.scalars(select(Delivery).order_by(Delivery.id)))


async def event_row(r: Resources, event_id: str) -> Event:
    async with r.sessions() as session:
        found = await session.scalar(select(Event).where(Event.event_id == event_id))
        assert found is not None
        return found


async def test_posted_twice_and_fanned_out_twice_gives_one_delivery_and_one_mail_each(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    emails = [f"s{i}@example.org" for i in range(5)]
    for email in emails:
        await subscribe(r, email, condition="Small Cell Lung Carcinoma")
    event = new_study("NCT05879978")
    assert await post_events(client, [event]) == {"accepted": 1, "duplicates": 0}
    assert await post_events(client, [event]) == {"accepted": 0, "duplicates": 1}
    await run_worker(r)
    # A rerun from the start, twice: rewind the event (its cursor and the count that goes with
    # it, as `notifier replay` does) and fan out again.
    row = await event_row(r, event["event_id"])
    async with r.sessions.begin() as session:
        await session.execute(
            update(Event)
            .where(Event.id == row.id)
            .values(status="fanning_out", fanout_cursor=0, matched=0)
        )
    await r.redis.enqueue_job("fanout_event", row.id, _job_id="rerun-1")
    await r.redis.enqueue_job("fanout_event", row.id, _job_id="rerun-2")
    await run_worker(r)
    rows = await deliveries(r)
    assert Counter(d.subscriber_id for d in rows).most_common(1)[0][1] == 1
    assert [d.status for d in rows] == ["sent"] * 5
    assert Counter(m.rcpt_to for m in smtp.messages) == dict.fromkeys(emails, 1)
    row = await event_row(r, event["event_id"])
    assert (row.status, row.matched, row.duplicates) == ("fanned_out", 5, 1)


async def test_three_matching_subscriptions_get_one_mail_naming_all_three(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    subs = [
        await subscribe(r, "ada@example.org", study="NCT05879978"),
        await subscribe(r, "ada@example.org", condition="Neuroendocrine Tumors"),
        await subscribe(r, "ada@example.org", condition="SCLC", mesh_id="D055752"),
    ]
    await subscribe(r, "bob@example.org", condition="Melanoma", mesh_id="D008545", broad=True)
    event = new_study("NCT05879978")
    await post_events(client, [event])
    await run_worker(r)
    assert len(smtp.messages) == 1
    received = smtp.messages[0]
    assert received.rcpt_to == "ada@example.org"
    msg = received.message
    text, html = text_of(msg), html_of(msg)
    title = shorten(event["study"]["brief_title"], NAME_MAX)
    for label in (f"“{title}” (NCT05879978)", "Neuroendocrine Tumors", "SCLC"):
        assert f"Stop alerts for {label}" in text
        assert f"Stop alerts for {html_escape(label)}" in html
    assert "You follow “Neuroendocrine Tumors”" in text
    links = re.findall(rf"{re.escape(PUBLIC_URL)}/v1/unsubscribe/[\w.\-]+", text)
    assert len(set(links)) == 3
    # The mail client's button ends all three (tests/test_unsubscribe.py); each link one.
    one_click = msg["List-Unsubscribe"].strip("<>")
    assert one_click.startswith(f"{PUBLIC_URL}/v1/unsubscribe/")
    assert one_click not in links
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Subject"].startswith("New study")
    assert "NCT05879978" in msg["Subject"]
    assert f"{PUBLIC_URL}/v1/manage/" in text
    (delivery,) = await deliveries(r)
    assert delivery.message_id == msg["Message-ID"]

    # Follow the one-click link of the condition subscription: the next alert names the others.
    token_path = links[1].removeprefix(PUBLIC_URL)
    resp = await client.post(token_path, data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200
    async with r.sessions() as session:
        statuses = {s.id: s.status for s in await session.scalars(select(Subscription))}
    assert [statuses[s.id] for s in subs] == ["confirmed", "unsubscribed", "confirmed"]
    await post_events(client, [status_change("NCT05879978", "RECRUITING", "COMPLETED")])
    await run_worker(r)
    assert len(smtp.to("ada@example.org")) == 2
    second = text_of(smtp.to("ada@example.org")[1].message)
    assert "(NCT05879978): http" in second  # "Stop alerts for “Title” (NCT…): <link>"
    assert "Stop alerts for Neuroendocrine Tumors" not in second
    assert "Completed" in smtp.to("ada@example.org")[1].message["Subject"]


async def test_an_immaterial_change_mails_nobody(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    await subscribe(resources, "ada@example.org", study="NCT05879978")
    event = status_change("NCT05879978", "RECRUITING", "RECRUITING")
    event["change_kind"] = "study_updated"
    event["changes"] = [
        {
            "path": "protocolSection.statusModule.statusVerifiedDate",
            "op": "replace",
            "old": "2023-05",
            "new": "2023-06",
        }
    ]
    await post_events(client, [event])
    await run_worker(resources)
    assert (await event_row(resources, event["event_id"])).status == "immaterial"
    assert await deliveries(resources) == []
    assert smtp.messages == []


async def test_digest_subscribers_are_held_and_discreet_ones_get_a_neutral_subject(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    await subscribe(r, "daily@example.org", condition="SCLC", frequency="daily")
    await subscribe(r, "private@example.org", condition="SCLC", discreet=True)
    await post_events(client, [new_study("NCT05879978")])
    await run_worker(r)
    rows = {d.status for d in await deliveries(r)}
    assert rows == {"held", "sent"}
    (mail,) = smtp.messages
    assert mail.rcpt_to == "private@example.org"
    assert mail.message["Subject"] == "A new study matches a condition you follow"
    assert "SCLC" not in mail.message["Subject"]
    assert "Small Cell" in text_of(mail.message)  # the body still says what it is about


@pytest.mark.parametrize("stage", ["slices", "rows"])
@pytest.mark.parametrize("change", ["unsubscribe", "pause", "suppress"])
async def test_unsubscribe_pause_and_suppression_are_checked_again_before_sending(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP, change: str, stage: str
) -> None:
    """Checked when a slice's delivery rows are written and again just before each mail: a
    change after the fan-out's walk (stage "slices") or after the rows (stage "rows") counts."""
    r = resources
    sub = await subscribe(r, "ada@example.org", study="NCT05879978")
    await subscribe(r, "bob@example.org", study="NCT05879978")
    event = new_study("NCT05879978")
    await post_events(client, [event])
    row = await event_row(r, event["event_id"])
    await r.redis.flushdb()  # drop the queued fan-out: run it by hand, then change things
    ids = await fan_out_rows(r, row.id) if stage == "rows" else []
    if stage == "slices":
        assert (await fanout_event({"resources": r}, row.id))["recipients"] == 2
    async with r.sessions.begin() as session:
        if change == "suppress":
            await suppress(session, r.email_hash("ada@example.org"), "complaint")
        else:
            values = {"status": "unsubscribed"} if change == "unsubscribe" else {"paused": True}
            await session.execute(
                update(Subscription).where(Subscription.id == sub.id).values(**values)
            )
    if stage == "rows":
        await r.redis.enqueue_job("send_deliveries", ids)
    await run_worker(r)
    assert [m.rcpt_to for m in smtp.messages] == ["bob@example.org"]
    statuses = sorted(d.status for d in await deliveries(r))
    if stage == "rows":
        assert statuses == ["sent", "skipped"]
    else:
        assert statuses == ["sent"]  # no longer a match: the slice wrote no row for ada


class TestPagedFanout:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"fanout_page_size": 3, "send_batch_size": 2}

    async def test_small_pages_and_batches_reach_everyone_once(
        self, client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
    ) -> None:
        emails = [f"p{i:02d}@example.org" for i in range(11)]
        for i, email in enumerate(emails):
            await subscribe(resources, email, condition=["SCLC", "Neuroendocrine Tumors"][i % 2])
            if i % 3 == 0:
                await subscribe(resources, email, study="NCT05879978")
        await post_events(client, [new_study("NCT05879978")])
        worker = await run_worker(resources)
        assert worker.jobs_complete >= 1 + 6  # one fan-out, at least ceil(11 / 2) send batches
        assert Counter(m.rcpt_to for m in smtp.messages) == dict.fromkeys(emails, 1)

    async def test_slices_cover_the_walk_and_are_read_again_when_sent(
        self, client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
    ) -> None:
        """One slice row per send batch, contiguous from the first matching id to the last; a
        subscriber who confirms between the walk and the slice's job, inside its run, is mailed;
        progress counts the slices' recipients as pending until their rows exist."""
        r = resources
        emails = [f"s{i}@example.org" for i in range(7)]
        subs = [await subscribe(r, email, condition="SCLC") for email in emails]
        late = await subscribe(r, "late@example.org", condition="SCLC", status="pending")
        tail = await subscribe(r, "tail@example.org", condition="SCLC")
        event = new_study("NCT05879978")
        await post_events(client, [event])
        row = await event_row(r, event["event_id"])
        await r.redis.flushdb()
        assert (await fanout_event({"resources": r}, row.id))["recipients"] == 8
        async with r.sessions() as session:
            slices = list(await session.scalars(select(FanoutSlice).order_by(FanoutSlice.id)))
        ids = [s.subscriber_id for s in subs] + [tail.subscriber_id]
        # Page 1 is one batch (2 ids), then pages of 3 cut in batches of 2 (2 + 1).
        assert [(s.after_id, s.last_id, s.size) for s in slices] == [
            (0, ids[1], 2),
            (ids[1], ids[3], 2),
            (ids[3], ids[4], 1),
            (ids[4], ids[6], 2),
            (ids[6], ids[7], 1),
        ]
        admin = {"Authorization": f"Bearer {r.settings.admin_token}"}
        resp = await client.get(f"/v1/admin/events/{event['event_id']}", headers=admin)
        progress = await resp.json()
        assert (progress["status"], progress["matched"], progress["pending"]) == (
            "fanned_out",
            8,
            8,
        )
        async with r.sessions.begin() as session:
            await session.execute(
                update(Subscription).where(Subscription.id == late.id).values(status="confirmed")
            )
        await run_worker(r)  # the slice jobs fanout_event queued
        expected = dict.fromkeys([*emails, "late@example.org", "tail@example.org"], 1)
        assert Counter(m.rcpt_to for m in smtp.messages) == expected
        resp = await client.get(f"/v1/admin/events/{event['event_id']}", headers=admin)
        assert ((await resp.json())["sent"], (await resp.json())["pending"]) == (9, 0)
        # A twin of a slice's job, or a sweep after it ran, finds it done and sends nothing.
        assert await materialise(r, slices[0].id) is None
        await enqueue_slices(r, [s.id for s in slices], "twin")
        await run_worker(r)
        assert len(smtp.messages) == 9

    async def test_a_replay_during_a_fanout_reaches_who_matches_now(
        self,
        client: TestClient[Any, Any],
        resources: Resources,
        smtp: RecordingSMTP,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """`notifier replay` resets the cursor while the event's fan-out is still paging: the
        running job must not keep skipping the ranges it found exhausted before the reset (a
        subscriber who matches only the study key, confirmed meanwhile, would be missed)."""
        import io

        import notifier.jobs.fanout
        import notifier.queue
        from notifier.ops.commands import Console, replay

        r = resources
        await subscribe(r, "early@example.org", study="NCT05879978")  # the study key: 1 row
        emails = [f"c{i:02d}@example.org" for i in range(8)]
        for email in emails:
            await subscribe(r, email, condition="SCLC")
        event = new_study("NCT05879978")
        real_enqueue = notifier.queue.enqueue_slices
        pages = 0

        async def enqueue_then_replay(res: Resources, ids: list[int], *stamp: object) -> None:
            nonlocal pages
            await real_enqueue(res, ids, *stamp)
            pages += 1
            if pages == 2:  # the study key was exhausted on the first page
                await subscribe(r, "late@example.org", study="NCT05879978")
                console = Console(io.StringIO(), io.StringIO())
                assert await replay(r, event["event_id"], console) == 0

        monkeypatch.setattr(notifier.jobs.fanout, "enqueue_slices", enqueue_then_replay)
        await post_events(client, [event])
        await run_worker(r)
        expected = dict.fromkeys([*emails, "early@example.org", "late@example.org"], 1)
        assert Counter(m.rcpt_to for m in smtp.messages) == expected


class TestSendRate:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"send_rate": 20.0, "send_batch_size": 10}

    async def test_the_configured_rate_is_kept_without_dropping_mail(
        self, client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
    ) -> None:
        emails = [f"r{i:02d}@example.org" for i in range(30)]
        for email in emails:
            await subscribe(resources, email, study="NCT05879978")
        await post_events(client, [new_study("NCT05879978")])
        started = time.monotonic()
        await run_worker(resources)
        elapsed = time.monotonic() - started
        assert Counter(m.rcpt_to for m in smtp.messages) == dict.fromkeys(emails, 1)
        # 20/s over a moving 1 s window: 30 mails need a second window.
        assert elapsed >= 0.95, elapsed


async def test_two_deployments_on_one_redis_do_not_take_each_others_jobs(
    resources: Resources,
) -> None:
    """arq keeps job and result keys by id alone, whatever the queue: event 1 of a second
    deployment (another NOTIFIER_QUEUE_NAME on the same Redis) must still get its fan-out job
    while the first deployment's "fanout 1" result is kept."""
    import dataclasses

    other = dataclasses.replace(
        resources, settings=resources.settings.model_copy(update={"queue_name": "other:queue"})
    )
    first = await resources.redis.enqueue_job(
        "fanout_event", 1, _job_id=resources.job_id("fanout", 1)
    )
    second = await resources.redis.enqueue_job(
        "fanout_event", 1, _job_id=other.job_id("fanout", 1), _queue_name="other:queue"
    )
    assert first is not None
    assert second is not None
    assert first.job_id != second.job_id
    # The same deployment enqueueing the same event again is still refused (idempotent).
    again = await resources.redis.enqueue_job(
        "fanout_event", 1, _job_id=resources.job_id("fanout", 1)
    )
    assert again is None
    await resources.redis.delete("other:queue")


@pytest.mark.postgres_only
async def test_a_subscriber_erased_while_a_slice_is_written_costs_the_others_nothing(
    client: TestClient[Any, Any],
    resources: Resources,
    smtp: RecordingSMTP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An erasure committed between a slice's read and its insert fails the insert (foreign
    key); the slice is read again at once, not left for the sweep minutes later."""
    import notifier.jobs.fanout

    r = resources
    emails = [f"e{i}@example.org" for i in range(4)]
    subs = [await subscribe(r, email, study="NCT05879978") for email in emails]
    real_matches = notifier.jobs.fanout.slice_matches
    erased = False

    async def matches_then_erase(*args: Any) -> dict[int, Any]:
        nonlocal erased
        found = await real_matches(*args)
        if not erased:
            erased = True
            async with r.sessions.begin() as other:  # another request, committed meanwhile
                await other.execute(
                    delete(Subscriber).where(Subscriber.id == subs[1].subscriber_id)
                )
        return found

    monkeypatch.setattr(notifier.jobs.fanout, "slice_matches", matches_then_erase)
    await post_events(client, [new_study("NCT05879978")])
    await run_worker(r)
    assert erased
    assert sorted(m.rcpt_to for m in smtp.messages) == sorted(emails[:1] + emails[2:])


async def test_an_event_key_handed_out_again_still_gets_its_fan_out(resources: Resources) -> None:
    """A database restored or recreated behind the same Redis hands out event pk 1 again while
    arq still keeps the first "fanout 1" (queued, or its result): the second event's fan-out
    must be queued, not refused as a duplicate and left ~5 minutes to the sweep."""
    from notifier.core.events import enqueue_fanouts

    await enqueue_fanouts(resources, [1])
    with time_machine.travel(utcnow() + timedelta(seconds=1), tick=False):
        await enqueue_fanouts(resources, [1])
    jobs = await resources.redis.queued_jobs()
    assert [job.function for job in jobs] == ["fanout_event", "fanout_event"]
    assert len({job.job_id for job in jobs}) == 2


@pytest.mark.postgres_only
async def test_a_slice_writes_its_rows_with_cached_plans(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    """The transaction that inserts a slice's delivery rows leaves plan_cache_mode alone: under
    force_custom_plan PostgreSQL plans each row's two foreign-key checks afresh (a 50,000-row
    insert into a table with one key: ~210 ms against 420-500), which was a third of its CPU a
    mail in the fan-out benchmark (docs/PERFORMANCE.md, step 17). The same for a slice's
    rows written without sending (materialise)."""
    from sqlalchemy import event

    r = resources
    for i in range(3):
        await subscribe(r, f"plan{i}@example.org", study="NCT05879978")
    by_connection: dict[int, list[str]] = {}

    def executed(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        by_connection.setdefault(id(conn.connection.dbapi_connection), []).append(statement)

    def ended(conn: Any) -> None:
        by_connection.setdefault(id(conn.connection.dbapi_connection), []).append("COMMIT")

    engine = r.engine.sync_engine
    event.listen(engine, "before_cursor_execute", executed)
    event.listen(engine, "commit", ended)
    event.listen(engine, "rollback", ended)
    try:
        await post_events(client, [new_study("NCT05879978")])
        await run_worker(r)
        later = status_change("NCT05879978", "RECRUITING", "ACTIVE_NOT_RECRUITING")
        await post_events(client, [later])
        async with r.sessions() as session:
            later_pk = await session.scalar(
                select(Event.id).where(Event.event_id == later["event_id"])
            )
        assert later_pk is not None
        assert len(await fan_out_rows(r, later_pk)) == 3
    finally:
        event.remove(engine, "before_cursor_execute", executed)
        event.remove(engine, "commit", ended)
        event.remove(engine, "rollback", ended)
    assert len(smtp.messages) == 3
    transactions: list[list[str]] = [[]]
    for statements in by_connection.values():
        for statement in statements:
            if statement == "COMMIT":
                transactions.append([])
            else:
                transactions[-1].append(statement)
        transactions.append([])
    inserts = [t for t in transactions if any("INSERT INTO deliveries" in s for s in t)]
    assert inserts, "no transaction inserted delivery rows"
    for statements in inserts:
        assert not any("plan_cache_mode" in s for s in statements), statements
