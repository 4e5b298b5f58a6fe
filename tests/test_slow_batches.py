"""A batch that waits long for the shared send rate keeps its claim: the sweep must not take a
slow but live batch for a dead worker's and send its mails a second time (found in review)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.clock import utcnow
from notifier.data.models import Delivery, Event, FanoutSlice
from notifier.jobs.fanout import fanout_event, take_slice
from notifier.jobs.outcomes import claim
from notifier.jobs.sweep import sweep
from notifier.resources import Resources
from tests.conftest import run_worker
from tests.events_factory import fan_out_rows, new_study, post_events, subscribe
from tests.smtp_server import RecordingSMTP


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # One mail per 2 s: each waits longer than the 1.5 s after which a claim looks dead.
    return {"send_rate": 0.5, "sweep_stale_after": 1.5, "send_batch_size": 10}


@pytest.mark.postgres_only
async def test_the_sweep_leaves_a_slow_live_batch_alone(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    emails = [f"slow{i}@example.org" for i in range(3)]
    for email in emails:
        await subscribe(resources, email, study="NCT05879978")
    await post_events(client, [new_study("NCT05879978")])

    async def sweeping() -> None:
        while True:
            await sweep({"resources": resources})
            await asyncio.sleep(0.2)

    sweeper = asyncio.create_task(sweeping())
    try:
        await run_worker(resources)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
    await run_worker(resources)  # whatever the sweep re-enqueued
    got = Counter(m.rcpt_to for m in smtp.messages)
    assert dict(got) == dict.fromkeys(emails, 1), dict(got)


class TestClaimLapse:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"sweep_stale_after": 1.5, "send_batch_size": 10}

    async def test_a_batch_held_up_past_its_claim_stops_and_the_sweep_sends_the_rest_once(
        self,
        client: TestClient[Any, Any],
        resources: Resources,
        smtp: RecordingSMTP,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """PostgreSQL unreachable while a batch records (found by the fault suite: 100
        duplicates): the claim on its slice cannot be renewed, the sweep hands the slice to a
        new job once the database is back, and only then does the batch's write land. The batch
        must not go on sending; the new job sends only to who has no row."""
        import notifier.jobs.outcomes
        import notifier.jobs.sending
        import notifier.jobs.sweep
        import notifier.queue

        emails = [f"held{i}@example.org" for i in range(6)]
        for email in emails:
            await subscribe(resources, email, study="NCT05879978")
        real_write = notifier.jobs.outcomes._write
        real_enqueue = notifier.queue.enqueue_slices
        swept: list[int] = []
        held = False

        async def held_up_write(*args: Any) -> None:
            nonlocal held
            still_sending = args[4]
            if still_sending and not held:  # the first flush in the middle of the batch
                held = True
                await asyncio.sleep(1.6)  # longer than NOTIFIER_SWEEP_STALE_AFTER
                # The database is back and the sweep runs first: the batch's slice looks dead.
                await sweep({"resources": resources})
                assert len(swept) == 1
                await real_write(*args)
                # The sweep's job runs once the write has landed (else the sent row would be
                # mailed again: the duplicate an outage longer than the claim can cause).
                await real_enqueue(resources, swept, "swept")
                return
            await real_write(*args)

        async def hold_sweep_jobs(res: Resources, ids: list[int], *stamp: object) -> None:
            swept.extend(ids)

        monkeypatch.setattr(notifier.jobs.outcomes, "_write", held_up_write)
        monkeypatch.setattr(notifier.jobs.sweep, "enqueue_slices", hold_sweep_jobs)
        monkeypatch.setattr(notifier.jobs.sending, "FLUSH_SECONDS", 0.0)  # flush after every mail
        await post_events(client, [new_study("NCT05879978")])
        await run_worker(resources)
        assert held
        got = Counter(m.rcpt_to for m in smtp.messages)
        assert dict(got) == dict.fromkeys(emails, 1), dict(got)

    async def test_after_a_database_outage_the_sweep_leaves_claimed_rows_for_a_while(
        self, client: TestClient[Any, Any], resources: Resources, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A live batch waiting through an outage lands its outcomes within a second of the
        database's return; the sweep must not take its rows first (found by the fault suite)."""
        r = resources
        for i in range(3):
            await subscribe(r, f"claimed{i}@example.org", study="NCT05879978")
        await subscribe(r, "waiting@example.org", study="NCT05835778")
        await post_events(client, [new_study("NCT05879978"), new_study("NCT05835778")])
        await r.redis.flushdb()
        async with r.sessions() as session:
            pks = list(await session.scalars(select(Event.id).order_by(Event.id)))
        claimed = await claim(r, await fan_out_rows(r, pks[0]))  # a batch in flight…
        await fan_out_rows(r, pks[1])  # …and a row whose job was lost
        assert len(claimed) == 3
        r.outage.seen_at = time.monotonic()  # seen here
        later = utcnow() + timedelta(seconds=r.settings.sweep_stale_after + 1)
        with time_machine.travel(later, tick=False):
            assert (await sweep({"resources": r}))["deliveries"] == 1  # the pending row only
            r.outage.seen_at = float("-inf")  # long ago here…
            await r.redis.set(r.outage.key, b"1", px=60_000)  # …but another worker just saw it
            assert (await sweep({"resources": r}))["deliveries"] == 0
            await r.redis.delete(r.outage.key)  # its report expired
            assert (await sweep({"resources": r}))["deliveries"] == 3  # now the claimed ones

    async def test_after_a_database_outage_the_sweep_leaves_a_slice_being_sent_for_a_while(
        self, client: TestClient[Any, Any], resources: Resources
    ) -> None:
        """The same for a fan-out slice taken by a live batch: not handed out again while a
        worker saw the database unreachable within the stale window."""
        r = resources
        for i in range(3):
            await subscribe(r, f"slice{i}@example.org", study="NCT05879978")
        await post_events(client, [new_study("NCT05879978")])
        await r.redis.flushdb()
        async with r.sessions() as session:
            event_pk = await session.scalar(select(Event.id))
        assert event_pk is not None
        await fanout_event({"resources": r}, event_pk)
        await r.redis.flushdb()
        async with r.sessions() as session:
            (slice_id,) = list(await session.scalars(select(FanoutSlice.id)))
        assert await take_slice(r, slice_id) is not None  # a batch in flight
        r.outage.seen_at = time.monotonic()
        later = utcnow() + timedelta(seconds=r.settings.sweep_stale_after + 1)
        with time_machine.travel(later, tick=False):
            assert (await sweep({"resources": r}))["slices"] == 0
            r.outage.seen_at = float("-inf")
            assert (await sweep({"resources": r}))["slices"] == 1  # now it is handed out
        async with r.sessions() as session:
            status = await session.scalar(select(FanoutSlice.status))
        assert status == "pending"

    async def test_a_send_that_hangs_past_the_claim_records_no_retry_over_another_job(
        self, client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
    ) -> None:
        """A relay that answers only after the claim lapsed: the batch may no longer own its
        slice, so it writes no retry for that message and sends none of the rest; the sweep
        hands the slice out again and everyone gets one mail."""
        r = resources
        emails = [f"hung{i}@example.org" for i in range(3)]
        for email in emails:
            await subscribe(r, email, study="NCT05879978")
        smtp.slow[emails[0]] = 1.3  # past 80% of NOTIFIER_SWEEP_STALE_AFTER (1.5 s)
        smtp.reject[emails[0]] = ["451 4.3.0 try later"]  # then a transient refusal, once
        await post_events(client, [new_study("NCT05879978")])
        await run_worker(r)
        assert smtp.messages == []
        async with r.sessions() as session:
            rows = list(await session.scalars(select(Delivery).order_by(Delivery.id)))
            slices = list(await session.scalars(select(FanoutSlice.status)))
        # Still claimed: no "pending" retry written for a mail the sweep may have handed on.
        assert rows == []
        assert slices == ["sending"]
        later = utcnow() + timedelta(seconds=r.settings.sweep_stale_after + 1)
        with time_machine.travel(later, tick=True):
            assert (await sweep({"resources": r}))["slices"] == 1
            await run_worker(r)
        got = Counter(m.rcpt_to for m in smtp.messages)
        assert dict(got) == dict.fromkeys(emails, 1), dict(got)
