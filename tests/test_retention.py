"""Retention (jobs.retention): delivery rows of events finished longer ago than
NOTIFIER_DELIVERY_RETENTION_DAYS go, their counts stay, a replay is refused; nothing live is
touched. On PostgreSQL through partitions (rolled daily, dropped whole), on SQLite in batches."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, text, update

from notifier.data import partitions, queries
from notifier.data.models import Delivery, Event, EventDeliveryCount, FanoutSlice, Subscriber
from notifier.data.study_tables import Study, StudyVersion
from notifier.jobs import retention
from notifier.jobs.retention import run_retention
from notifier.resources import Resources
from tests.conftest import ADMIN_TOKEN, run_worker
from tests.events_factory import post_events, record_ids, status_change, subscribe
from tests.factories import make_delivery, make_event
from tests.smtp_server import RecordingSMTP
from tests.test_opscli import CLI, cli_env  # noqa: F401  # fixtures
from tests.test_opscli import cli as cli  # the fixture, used by name

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1, minutes=1)  # a cron run a minute after the day is over
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _rows(r: Resources, event_pk: int) -> list[str]:
    async with r.sessions() as session:
        statuses = await session.scalars(
            select(Delivery.status).where(Delivery.event_pk == event_pk).order_by(Delivery.id)
        )
        return [str(s) for s in statuses]


async def _slices(r: Resources, event_pk: int) -> int:
    async with r.sessions() as session:
        found = await session.scalar(
            select(func.count()).select_from(FanoutSlice).where(FanoutSlice.event_pk == event_pk)
        )
        return int(found or 0)


async def _event(r: Resources, event_id: str) -> Event:
    async with r.sessions() as session:
        event = await session.scalar(select(Event).where(Event.event_id == event_id))
    assert event is not None
    return event


async def _progress(client: TestClient[Any, Any], event_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/admin/events/{event_id}", headers=ADMIN)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


def _near(stamp: str, at: datetime) -> bool:
    """An ISO 8601 'Z' time from the API within a minute of `at` (the test clock ticks)."""
    assert stamp.endswith("Z")
    return abs((datetime.fromisoformat(stamp[:-1] + "+00:00") - at).total_seconds()) < 60


async def _partitions(r: Resources) -> list[str]:
    async with r.sessions() as session:
        return [p.name for p in await partitions.partitions(session)]


async def test_a_finished_event_is_compacted_and_nothing_live_is_touched(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP, cli: CLI, backend: str
) -> None:
    r = resources
    study_a, study_b = record_ids()[:2]
    postgres = backend == "postgres"
    with time_machine.travel(START, tick=True) as clock:
        # Day 0: event A, mailed to three readers.
        for i in range(3):
            await subscribe(r, f"reader{i}@example.org", study=study_a)
        event_a = status_change(study_a, "RECRUITING", "COMPLETED")
        await post_events(client, [event_a])
        await run_worker(r)
        assert all(len(smtp.to(f"reader{i}@example.org")) == 1 for i in range(3))
        a = await _event(r, event_a["event_id"])

        # Day 1: a new partition; event B's item held for a daily digest not yet mailed, and
        # event C still fanning out (its row pending).
        clock.move_to(START + DAY)
        assert await run_retention(r) == {"events_compacted": 0, "payloads_purged": 0}
        if postgres:
            assert await _partitions(r) == ["deliveries_e1", "deliveries_e1000000001"]
        await subscribe(r, "daily@example.org", study=study_b, frequency="daily")
        event_b = status_change(study_b, "RECRUITING", "COMPLETED")
        await post_events(client, [event_b])
        await run_worker(r)
        b = await _event(r, event_b["event_id"])
        assert await _rows(r, b.id) == ["held"]
        async with r.sessions.begin() as session:
            c = await make_event(session, nct_id=study_a, status="fanning_out")
            reader = await session.scalar(select(Subscriber.id).limit(1))
            assert reader is not None
            await make_delivery(session, event=c, subscriber_id=reader)
        if postgres:  # new events went to the new partition
            assert (b.id, c.id) > (partitions.SPAN, partitions.SPAN)
        progress_a = await _progress(client, event_a["event_id"])
        assert progress_a["sent"] == 3
        stats_before = json.loads((await cli("stats", "--json")).out)["deliveries"]

        # Day 32: A finished 32 days ago: its rows go, its counts stay.
        clock.move_to(START + 32 * DAY)
        done = await run_retention(r)
        assert done["events_compacted"] == 1
        assert await _rows(r, a.id) == []
        compacted = await _progress(client, event_a["event_id"])
        # The same counts, and the time its rows went (an operator sees why they are gone).
        assert compacted == {**progress_a, "compacted_at": compacted["compacted_at"]}
        assert _near(compacted["compacted_at"], START + 32 * DAY)
        progress_a = compacted
        stats = json.loads((await cli("stats", "--json")).out)
        assert stats["deliveries"] == stats_before
        assert stats["events_compacted"] == 1
        assert (await _event(r, event_a["event_id"])).compacted_at is not None
        assert await _slices(r, a.id) == 0  # its fan-out slices went too; B's stay
        assert await _slices(r, b.id) == 1
        if postgres:  # A's partition went whole; B and C's stays (and a new one was rolled)
            assert await _partitions(r) == ["deliveries_e1000000001", "deliveries_e2000000001"]
        # Nothing live was touched: B's held item (its digest is not mailed yet) and C's row.
        assert await _rows(r, b.id) == ["held"]
        assert await _rows(r, c.id) == ["pending"]
        assert (await _event(r, event_b["event_id"])).compacted_at is None

        # A replay could not tell who was mailed: refused, and nothing changes.
        ran = await cli("replay", event_a["event_id"])
        assert ran.code == 1
        assert ran.out.startswith(f"refused: event {event_a['event_id']} was compacted")
        assert "Nothing was changed" in ran.out
        assert (await _event(r, event_a["event_id"])).status == "fanned_out"
        # B is past retention too (not yet compacted: its digest item waits): refused as well.
        ran = await cli("replay", event_b["event_id"])
        assert ran.code == 1
        assert "more than NOTIFIER_DELIVERY_RETENTION_DAYS=30 days ago" in ran.out

        # Again: nothing more to do, the same answers.
        assert (await run_retention(r))["events_compacted"] == 0
        assert await _progress(client, event_a["event_id"]) == progress_a

        # Day 95: A's payload is cut (past the 90 days of payload retention), the row stays.
        clock.move_to(START + 95 * DAY)
        assert (await run_retention(r))["payloads_purged"] == 1
        a = await _event(r, event_a["event_id"])
        assert (a.payload, a.event_id) == ({}, event_a["event_id"])
        assert (await _event(r, event_b["event_id"])).payload != {}
        # A re-sent A is still a duplicate (the event row is what dedupes it).
        assert (await post_events(client, [event_a]))["duplicates"] == 1
        after_purge = await _progress(client, event_a["event_id"])
        assert _near(after_purge["payload_purged_at"], START + 95 * DAY)
        assert after_purge == {
            **progress_a,
            "duplicates": 1,
            "payload_purged_at": after_purge["payload_purged_at"],
        }


async def test_sqlite_deletes_in_bounded_batches(
    resources: Resources, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """More rows than a batch: every one goes, counted once; a PostgreSQL partition drop
    counts the same."""
    r = resources
    monkeypatch.setattr(retention, "DELETE_BATCH", 7)
    with time_machine.travel(START, tick=True) as clock:
        async with r.sessions.begin() as session:
            event = await make_event(session)
            event.fanned_out_at = START
            for i in range(20):
                subscriber = Subscriber(email=f"s{i}@example.org", email_hash=f"h{i}")
                session.add(subscriber)
                await session.flush()
                status = ("sent", "failed", "skipped")[i % 3]
                await make_delivery(
                    session, event=event, subscriber_id=subscriber.id, status=status
                )
        clock.move_to(START + DAY)
        await run_retention(r)  # PostgreSQL: rolls, so the event's partition may go
        clock.move_to(START + 40 * DAY)
        assert (await run_retention(r))["events_compacted"] == 1
    async with r.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Delivery)) == 0
        rows = await session.execute(select(EventDeliveryCount.status, EventDeliveryCount.count))
        counts = {str(status): int(n) for status, n in rows}
    assert counts == {"sent": 7, "failed": 7, "skipped": 6}


async def test_study_versions_keep_each_studys_latest(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daily pass deletes versions past NOTIFIER_STUDY_VERSION_RETENTION_DAYS, page after
    page along (stored_at, id), and never a study's latest, however old."""
    r = resources
    monkeypatch.setattr(retention, "DELETE_BATCH", 2)  # several pages, latest ones among them
    old = START - 400 * DAY
    async with r.sessions.begin() as session:
        for n, versions in enumerate((3, 1, 4, 1), start=1):
            nct = f"NCT{n:08d}"
            session.add(Study(nct_id=nct, brief_title=nct, versions=versions, updated_at=old))
            await session.flush()
            for seq in range(1, versions + 1):
                stored = old + seq * DAY if n != 3 or seq < 4 else START  # 3's latest is recent
                version = StudyVersion(
                    nct_id=nct, seq=seq, version_key=f"v{seq}", snapshot=b"x", stored_at=stored
                )
                session.add(version)
    with time_machine.travel(START, tick=True):
        assert await retention.purge_study_versions({"resources": r}) == 5
        assert await retention.purge_study_versions({"resources": r}) == 0
    async with r.sessions() as session:
        kept = (await session.execute(select(StudyVersion.nct_id, StudyVersion.seq))).all()
    assert sorted(kept) == [
        ("NCT00000001", 3),
        ("NCT00000002", 1),
        ("NCT00000003", 4),
        ("NCT00000004", 1),
    ]


@pytest.mark.postgres_only
async def test_a_partition_with_a_live_row_stays_whatever_its_age(resources: Resources) -> None:
    """Every event finished long ago, but one row is still pending (a retry, say): the whole
    partition stays, and the operator is told why."""
    r = resources
    with time_machine.travel(START, tick=True) as clock:
        async with r.sessions.begin() as session:
            event = await make_event(session)
            event.fanned_out_at = START
            subscriber = Subscriber(email="s@example.org", email_hash="h")
            session.add(subscriber)
            await session.flush()
            await make_delivery(session, event=event, subscriber_id=subscriber.id)
        clock.move_to(START + DAY)
        await run_retention(r)
        clock.move_to(START + 40 * DAY)
        assert (await run_retention(r))["events_compacted"] == 0
        assert await _partitions(r) == ["deliveries_e1", "deliveries_e1000000001"]
        async with r.sessions.begin() as session:
            await session.execute(text("UPDATE deliveries SET status = 'sent'"))
        assert (await run_retention(r))["events_compacted"] == 1
        assert await _partitions(r) == ["deliveries_e1000000001"]


@pytest.mark.postgres_only
async def test_the_send_path_looks_in_its_events_partition_only(resources: Resources) -> None:
    """With a month of partitions, claiming and recording a batch by id touches the partition
    of the batch's event only (EXPLAIN): by id alone it would probe every one."""
    from notifier.jobs.outcomes import _PG_OUTCOMES

    r = resources
    async with r.sessions.begin() as session:
        for day in range(1, 31):
            lower = 1 + day * partitions.SPAN
            await session.execute(
                text(
                    f"CREATE TABLE deliveries_e{lower} PARTITION OF deliveries"
                    f" FOR VALUES FROM ({lower}) TO ({lower + partitions.SPAN})"
                )
            )
        event = await make_event(session)
        subscriber = Subscriber(email="s@example.org", email_hash="h")
        session.add(subscriber)
        await session.flush()
        row = await make_delivery(session, event=event, subscriber_id=subscriber.id)

    def scanned(plan: list[str]) -> set[str]:
        return {name for line in plan for name in re.findall(r"on (deliveries_e\d+)", line)}

    async with r.sessions.begin() as session:
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        claim = (
            update(Delivery)
            .where(Delivery.id.in_([row.id]), *queries.in_partitions([event.id]))
            .values(status="sending")
        )
        compiled = claim.compile(session.bind, compile_kwargs={"literal_binds": True})
        plan = list(await session.scalars(text(f"EXPLAIN {compiled}")))
        assert scanned(plan) == {"deliveries_e1"}, plan
        outcomes = text(f"EXPLAIN {_PG_OUTCOMES.text}")
        now = START
        params = {
            "id": [row.id],
            "status": ["sent"],
            "last_error": [None],
            "message_id": ["<m@x>"],
            "sent_at": [now],
            "next_attempt_at": [now],
            "event_pks": [event.id],
        }
        plan = list(await session.scalars(outcomes, params))
        assert scanned(plan) == {"deliveries_e1"}, plan


@pytest.mark.postgres_only
async def test_recording_a_batch_reads_the_batch_not_its_whole_event(resources: Resources) -> None:
    """The outcome UPDATE finds a batch's rows by primary key: it once hashed every row of the
    event to update 500 (17 of 22 ms a batch with a 50k audience, growing with it)."""
    from notifier.jobs.outcomes import _PG_OUTCOMES

    r = resources
    async with r.sessions.begin() as session:
        event = await make_event(session)
        await session.execute(
            text(
                "INSERT INTO subscribers (email, email_hash, timezone, created_at)"
                " SELECT 'r' || i || '@example.org', 'h' || i, 'UTC', now()"
                " FROM generate_series(1, 3000) AS i"
            )
        )
        await session.execute(
            text(
                "INSERT INTO deliveries"
                " (event_pk, subscriber_id, status, attempts, next_attempt_at, created_at)"
                " SELECT :event, id, 'sending', 1, now(), now() FROM subscribers"
            ),
            {"event": event.id},
        )
        ids = list(await session.scalars(select(Delivery.id).order_by(Delivery.id).limit(10)))
    async with r.sessions.begin() as session:
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        params = {
            "id": ids,
            "status": ["sent"] * 10,
            "last_error": [None] * 10,
            "message_id": ["<m@x>"] * 10,
            "sent_at": [START] * 10,
            "next_attempt_at": [START] * 10,
            "event_pks": [event.id],
        }
        plan = list(
            await session.scalars(
                text(f"EXPLAIN (ANALYZE, FORMAT TEXT) {_PG_OUTCOMES.text}"), params
            )
        )
    read = [
        int(found.group(1))
        for line in plan
        if " on deliveries" in line and "Update on" not in line
        for found in [re.search(r"actual time=\S+ rows=(\d+)", line)]
        if found
    ]
    assert read, plan
    assert max(read) <= 10, "\n".join(plan)
