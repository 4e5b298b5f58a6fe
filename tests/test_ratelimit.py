"""Abuse limits with small, configured values: per IP and per address, shared through Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.clock import utcnow
from notifier.core.ratelimit import canonical_mailbox, ip_retry_after, may_mail_address
from notifier.resources import Resources, open_resources
from notifier.settings import Settings
from tests.conftest import run_worker
from tests.smtp_server import RecordingSMTP
from tests.test_subscriptions import (  # noqa: F401  # `resources` is a fixture override
    Client,
    resources_closing_limits,
    signup,
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "trusted_proxies": ["127.0.0.1/32"],
        "ip_requests_per_minute": 3,
        "signup_address_interval": 600,
        "signup_address_daily": 2,
        "confirmed_address_interval": 60,
        "confirmed_address_daily": 3,
    }


@pytest.fixture
async def second_process(settings: Settings, resources: Resources) -> AsyncIterator[Client]:
    """Another web process: its own resources and app, the same PostgreSQL/SQLite and Redis."""
    async with (
        open_resources(settings) as other,
        TestClient(TestServer(create_app(settings, other), host="127.0.0.1")) as client,
    ):
        yield client


async def test_ip_limit_counts_per_ip_and_frees_up_after_a_minute(resources: Resources) -> None:
    with time_machine.travel(utcnow(), tick=True) as clock:
        assert [await ip_retry_after(resources, "192.0.2.1") for _ in range(3)] == [None] * 3
        retry = await ip_retry_after(resources, "192.0.2.1")
        assert retry is not None
        assert 1 <= retry <= 60
        assert await ip_retry_after(resources, "192.0.2.2") is None
        clock.shift(timedelta(seconds=30))
        later = await ip_retry_after(resources, "192.0.2.1")
        assert later is not None
        assert later <= 31  # counts down with the window
        clock.shift(timedelta(seconds=31))
        assert await ip_retry_after(resources, "192.0.2.1") is None


async def test_never_confirmed_address_gets_one_mail_per_interval_and_two_a_day(
    resources: Resources,
) -> None:
    h = resources.email_hash("ada@example.org")
    with time_machine.travel(utcnow(), tick=True) as clock:
        assert await may_mail_address(resources, h, False)
        assert not await may_mail_address(resources, h, False)
        clock.shift(timedelta(seconds=599))
        assert not await may_mail_address(resources, h, False)
        clock.shift(timedelta(seconds=2))
        assert await may_mail_address(resources, h, False)
        clock.shift(timedelta(seconds=601))
        assert not await may_mail_address(resources, h, False)  # two a day
        assert await may_mail_address(resources, resources.email_hash("bo@example.org"), False)
        clock.shift(timedelta(days=1))
        assert await may_mail_address(resources, h, False)


async def test_a_confirmed_address_has_a_looser_allowance(resources: Resources) -> None:
    h = resources.email_hash("ada@example.org")
    with time_machine.travel(utcnow(), tick=True) as clock:
        assert await may_mail_address(resources, h, False)
        # Confirming opens the looser allowance at once (counted apart from the strict one).
        assert await may_mail_address(resources, h, True)
        assert not await may_mail_address(resources, h, True)
        for _ in range(2):
            clock.shift(timedelta(seconds=61))
            assert await may_mail_address(resources, h, True)
        clock.shift(timedelta(seconds=61))
        assert not await may_mail_address(resources, h, True)  # three a day


async def test_http_429_with_retry_after_holds_across_processes(
    client: Client, second_process: Client, resources: Resources
) -> None:
    assert (await signup(client, ip="203.0.113.5", email="a@example.org")).status == 202
    assert (await signup(second_process, ip="203.0.113.5", email="b@example.org")).status == 202
    assert (await signup(client, ip="203.0.113.5", email="c@example.org")).status == 202
    for c in (client, second_process):
        resp = await signup(c, ip="203.0.113.5", email="d@example.org")
        assert resp.status == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert "too many requests" in (await resp.json())["error"]
    # Invalid requests count too: a bot cannot probe for free.
    resp = await signup(client, ip="203.0.113.6", study="NCT1")
    assert resp.status == 422
    for _ in range(2):
        await signup(client, ip="203.0.113.6", study="NCT1")
    assert (await signup(client, ip="203.0.113.6")).status == 429


async def test_per_address_limit_holds_across_processes(
    client: Client, second_process: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    for i, c in enumerate([client, second_process] * 3):
        assert (await signup(c, ip=f"198.51.100.{i}", study=f"NCT{i:08d}")).status == 202
    await run_worker(resources)
    assert len(smtp.to("ada@example.org")) == 1


# --- plus-tag mail bombing (issue 18, finding 3) ------------------------------------------------


@pytest.mark.parametrize(
    ("address", "mailbox"),
    [
        ("Victim+0@Example.org", "victim@example.org"),
        ("victim+a+b@example.org", "victim@example.org"),
        ("j.doe+x@example.org", "j.doe@example.org"),  # a dot matters outside Gmail
        ("J.Doe+news@googlemail.com", "jdoe@gmail.com"),
        ("j.d.o.e@gmail.com", "jdoe@gmail.com"),
        ("+tag@example.org", "+tag@example.org"),  # nothing before the tag: kept whole
    ],
)
def test_canonical_mailbox(address: str, mailbox: str) -> None:
    assert canonical_mailbox(address) == mailbox


async def test_plus_tags_share_one_mailbox_allowance(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    """victim+0@ … victim+9@ from ten IPs: one confirmation mail into the one mailbox, as
    for `victim@` repeated."""
    for i in range(10):
        resp = await signup(
            client, ip=f"198.51.100.{i}", email=f"victim+{i}@example.org", study="NCT05879978"
        )
        assert resp.status == 202
    for i in range(3):
        resp = await signup(client, ip=f"198.51.100.{20 + i}", email=f"V.I.C.T.I.M+{i}@gmail.com")
        assert resp.status == 202
    await run_worker(resources)
    mailed = [m.rcpt_to for m in smtp.messages]
    assert len([a for a in mailed if a.startswith("victim+")]) == 1, mailed
    assert len([a for a in mailed if a.endswith("@gmail.com")]) == 1, mailed
