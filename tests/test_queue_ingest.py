"""The arq path for events: the same checks as HTTP, and a database outage retries, never loses.

Both found in review: a NUL in a queued event failed the job with a database error (no
rejected_events row), and any database error failed the job for good.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from arq import Retry
from sqlalchemy import func, select

from notifier.data.db import make_engine, make_sessionmaker
from notifier.data.models import Event, RejectedEvent
from notifier.jobs.ingest import ingest_trial_event
from notifier.pipeline import enqueue_event
from notifier.resources import Resources
from tests.conftest import run_worker
from tests.events_factory import new_study


async def count(r: Resources, model: Any) -> int:
    async with r.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_queued_event_with_nul_is_rejected_and_recorded(resources: Resources) -> None:
    event = new_study("NCT05879978")
    event["study"]["brief_title"] = "bad\x00title"
    await enqueue_event(resources.redis, event)
    await run_worker(resources)
    assert await count(resources, Event) == 0
    assert await count(resources, RejectedEvent) == 1


@pytest.mark.postgres_only
async def test_a_database_outage_retries_the_queued_event(resources: Resources) -> None:
    dead = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        down = replace(resources, engine=dead, sessions=make_sessionmaker(dead))
        with pytest.raises(Retry):
            await ingest_trial_event({"resources": down, "job_try": 1}, new_study("NCT05879978"))
    finally:
        await dead.dispose()
    # And with the database back, the same job stores it.
    result = await ingest_trial_event({"resources": resources}, new_study("NCT05879978"))
    assert result["result"] == "accepted"
