"""A confirmation job lost after its signup was answered 202 (a Redis master that died before
its last writes reached the replica, a flushed Redis) is enqueued again by the sweep: the mail
comes once, late rather than never. A signup refused its mail (the address's limits) stays
unmailed, and a request older than a confirm link's lifetime is left."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from notifier.clock import utcnow
from notifier.data.models import Subscriber
from notifier.resources import Resources
from tests.conftest import run_worker
from tests.smtp_server import RecordingSMTP
from tests.test_subscriptions import (  # noqa: F401  # `resources` is a fixture override
    ADA,
    Client,
    confirm_path,
    resources_closing_limits,
    signup,
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "trusted_proxies": ["127.0.0.1/32"],
        "signup_address_interval": 600,  # a second signup within 10 minutes gets no mail
    }


async def swept(r: Resources, after: float | None = None) -> dict[str, int]:
    """Run the sweep (and the jobs it enqueues) `after` seconds from now (default: just past
    the stale window); its counts."""
    later = after if after is not None else r.settings.sweep_stale_after + 1
    with time_machine.travel(utcnow() + timedelta(seconds=later), tick=True):
        job = await r.redis.enqueue_job("sweep")
        assert job is not None
        await run_worker(r)
        result: dict[str, int] = await job.result(timeout=5)
    return result


async def test_a_lost_confirmation_job_is_sent_by_the_sweep_once(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    assert (await signup(client)).status == 202
    await resources.redis.flushdb()  # the job is gone with Redis's last writes
    assert (await swept(resources))["confirmations"] == 1
    assert len(smtp.to(ADA)) == 1
    later = utcnow() + timedelta(seconds=resources.settings.sweep_stale_after + 5)
    with time_machine.travel(later, tick=True):  # the link was signed in the sweep's "now"
        confirm = await client.post(confirm_path(smtp), headers={"Accept": "application/json"})
    assert confirm.status == 200  # a working link: the person is subscribed
    assert (await swept(resources, 2 * resources.settings.sweep_stale_after))["confirmations"] == 0
    assert len(smtp.to(ADA)) == 1


async def test_a_job_that_ran_is_not_enqueued_again(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    assert (await signup(client)).status == 202
    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1
    assert (await swept(resources))["confirmations"] == 0
    assert len(smtp.to(ADA)) == 1  # the subscription is still pending: not a reason to mail


async def test_sweeps_before_the_job_runs_enqueue_it_once(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    """Two sweeps while the re-enqueued job still waits (a backlog): one job id, one mail."""
    assert (await signup(client)).status == 202
    await resources.redis.flushdb()
    later = utcnow() + timedelta(seconds=resources.settings.sweep_stale_after + 1)
    with time_machine.travel(later, tick=True):
        for _ in range(2):
            await resources.redis.enqueue_job("sweep")
            await run_worker(resources)
    assert len(smtp.to(ADA)) == 1


async def test_a_signup_refused_its_mail_is_not_mailed_by_the_sweep(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    assert (await signup(client)).status == 202
    await run_worker(resources)
    # Another study within the address's interval: recorded, answered alike, no mail.
    assert (await signup(client, study="NCT05844332")).status == 202
    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1
    assert (await swept(resources))["confirmations"] == 0
    assert len(smtp.to(ADA)) == 1


async def test_a_request_older_than_a_confirm_link_is_left(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    assert (await signup(client)).status == 202
    await resources.redis.flushdb()
    assert (await swept(resources, resources.settings.confirm_max_age + 60))["confirmations"] == 0
    assert smtp.to(ADA) == []
    async with resources.sessions() as session:
        stamp = await session.scalar(select(Subscriber.confirm_job_at))
    assert stamp is None  # nothing ran for it
