"""`notifier sync` against a local ClinicalTrials.gov API v2 stand-in serving the real records:
paging, a 503 on the way, a malformed record, the cursor, a second incremental run, the lock."""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from notifier.__main__ import build_parser
from notifier.data.models import Event, RejectedEvent
from notifier.data.study_tables import Study, StudyVersion, SyncState
from notifier.jobs.sync import sync_cron
from notifier.ops.commands import Console, run
from notifier.ops.ctgov_client import Backoff, FetchFailed, parse_retry_after
from notifier.ops.sync import Options, SyncBusy, sync_once
from notifier.resources import Resources
from tests.conftest import run_worker
from tests.events_factory import record, record_ids, subscribe
from tests.smtp_server import RecordingSMTP

RANGE = re.compile(r"AREA\[LastUpdatePostDate\]RANGE\[([0-9-]+),MAX\]")


def posted(rec: dict[str, Any]) -> str:
    return str(rec["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])


@dataclass
class FakeCtGov:
    """GET /api/v2/studies as the real API answers it: query.term RANGE filter, sort, pageSize,
    pageToken; `fail` holds statuses to answer (once each) before the request of a page."""

    studies: list[dict[str, Any]]
    fail: dict[int, list[int]] = field(default_factory=dict)  # page number -> statuses
    requests: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        self.requests.append(params)
        assert params["format"] == "json"
        assert params["sort"] == "LastUpdatePostDate:asc"
        match = RANGE.fullmatch(params["query.term"])
        assert match is not None, params
        chosen = sorted((s for s in self.studies if posted(s) >= match.group(1)), key=posted)
        offset = int(params.get("pageToken", "0"))
        size = int(params["pageSize"])
        page = offset // size + 1
        if self.fail.get(page):
            return web.Response(status=self.fail[page].pop(0), headers={"Retry-After": "0"})
        body: dict[str, Any] = {"studies": chosen[offset : offset + size]}
        if offset + size < len(chosen):
            body["nextPageToken"] = str(offset + size)
        if "countTotal" in params:
            body["totalCount"] = len(chosen)
        return web.json_response(body)


def malformed() -> dict[str, Any]:
    rec = record("NCT03801200")
    rec["protocolSection"]["identificationModule"]["nctId"] = "NCT00000001"
    rec["protocolSection"]["statusModule"]["overallStatus"] = 5
    rec["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = "2020-01-01"
    return rec


async def serve(fake: FakeCtGov) -> TestServer:
    app = web.Application()
    app.router.add_get("/api/v2/studies", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def count(r: Resources, model: Any, *where: Any) -> int:
    async with r.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def cli(r: Resources, *argv: str) -> tuple[int, str, str]:
    """The real `notifier sync` command (its own event loop, in a thread)."""
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(["sync", *argv])
    status = run(r.settings, args, Console(out, err))
    return status, out.getvalue(), err.getvalue()


async def test_sync_pages_retries_skips_the_malformed_and_resumes_incrementally(
    resources: Resources, smtp: RecordingSMTP
) -> None:
    studies = [record(n) for n in record_ids()]
    fake = FakeCtGov([*studies, malformed()], fail={2: [503]})
    server = await serve(fake)
    # A condition follower: a first import of old studies must not mail them.
    await subscribe(resources, "cond@example.org", condition="Lung Cancer")
    try:
        url = str(server.make_url("")).rstrip("/")
        status, out, err = await asyncio.to_thread(
            cli,
            resources,
            "--once",
            "--base-url",
            url,
            "--since",
            "2000-01-01",
            "--page-size",
            "10",
        )
        assert status == 0, err
        assert "synced 27 records in 3 pages" in out
        assert f"{len(studies)} new" in out
        assert "1 rejected" in out
        assert "NCT00000001" in out
        assert err == ""  # progress and retries are shown on a terminal only
        assert len(fake.requests) == 4  # three pages and one retry
        assert await count(resources, Study) == len(studies)
        assert await count(resources, StudyVersion) == len(studies)  # each stored once
        assert await count(resources, RejectedEvent, RejectedEvent.source == "sync") == 1
        newest = max(posted(s) for s in studies)
        async with resources.sessions() as session:
            state = await session.get(SyncState, "ctgov")
        assert state is not None
        assert state.cursor == newest
        assert state.last_run is not None
        assert state.last_run["fetched"] == 27
        await run_worker(resources)
        assert smtp.messages == []  # first posted long before the window: no new_study
        assert await count(resources, Event) == 0

        # A record changes: the next run asks from the cursor (minus the overlap) only.
        changed = record("NCT05879978")
        changed["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"
        changed["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = (
            "2025-12-02"
        )
        fake.studies = [
            changed if s["protocolSection"]["identificationModule"]["nctId"] == "NCT05879978" else s
            for s in fake.studies
        ]
        fake.requests.clear()
        status, out, err = await asyncio.to_thread(cli, resources, "--once", "--base-url", url)
        assert status == 0, err
        assert len(fake.requests) == 1
        assert "RANGE[2025-11-26,MAX]" in fake.requests[0]["query.term"]  # cursor - 2 days
        assert "synced 2 records in 1 pages" in out
        assert "1 changed, 1 unchanged" in out
        async with resources.sessions() as session:
            state = await session.get(SyncState, "ctgov", populate_existing=True)
            versions = await session.scalar(
                select(func.count()).where(StudyVersion.nct_id == "NCT05879978")
            )
        assert state is not None
        assert state.cursor == "2025-12-02"
        assert versions == 2
        assert await count(resources, Event, Event.change_kind == "status_changed") == 1
    finally:
        await server.close()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"sync_page_size": 5}


async def test_a_page_that_keeps_failing_stops_the_run_and_keeps_the_cursor(
    resources: Resources,
) -> None:
    fake = FakeCtGov([record(n) for n in record_ids()], fail={2: [503, 429, 502]})
    server = await serve(fake)
    try:
        opts = Options.of(
            resources,
            base_url=str(server.make_url("")),
            since=date(2000, 1, 1),
            backoff=Backoff(base=0.01, cap=0.02, attempts=3),
        )
        with pytest.raises(FetchFailed, match="3 attempts"):
            await sync_once(resources, opts)
        # Page 1 is stored and the cursor is its newest date; the run resumes from there.
        assert await count(resources, StudyVersion) == 5
        async with resources.sessions() as session:
            state = await session.get(SyncState, "ctgov")
        first_five = sorted(posted(s) for s in fake.studies)[:5]
        assert state is not None
        assert state.cursor == first_five[-1]
    finally:
        await server.close()


async def test_one_sync_at_a_time_and_the_cron_starts_from_today(resources: Resources) -> None:
    fake = FakeCtGov([record(n) for n in record_ids()])
    server = await serve(fake)
    try:
        base = str(server.make_url(""))
        lock = resources.redis.lock(resources.job_id("sync-lock"), timeout=30)
        assert await lock.acquire()
        with pytest.raises(SyncBusy):
            await sync_once(resources, Options.of(resources, base_url=base, since=date(2000, 1, 1)))
        await lock.release()
        settings = resources.settings.model_copy(update={"sync_base_url": base})
        resources.settings = settings
        result = await sync_cron({"resources": resources})
        assert result["result"] == "done"
        assert result["started_from"] == date.today().isoformat()
        assert result["fetched"] == 0
    finally:
        await server.close()


def test_retry_after_reads_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    backoff = Backoff(base=1, cap=8)
    assert 2 <= backoff.delay(3, None) <= 4  # the third step is 4 s, jittered within [2, 4]
    assert backoff.delay(1, 30.0) == 30.0
