"""A relay that drops one session (421) mid-batch: the batch reconnects and goes on; only the
message in flight waits for its retry, and every address still gets exactly one mail."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient

from notifier.resources import Resources
from tests.conftest import run_worker
from tests.events_factory import new_study, post_events, subscribe
from tests.smtp_server import RecordingSMTP


async def test_a_dropped_session_does_not_hold_back_the_rest_of_the_batch(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    emails = [f"{name}@example.org" for name in ("ann", "bob", "cid", "dee", "eve")]
    for email in emails:
        await subscribe(resources, email, study="NCT05879978")
    smtp.reject["bob@example.org"] = ["421 4.7.0 closing this session"]  # once
    await post_events(client, [new_study("NCT05879978")])
    await run_worker(resources)
    arrivals = [m.rcpt_to for m in smtp.messages]
    assert Counter(arrivals) == dict.fromkeys(emails, 1)
    # cid, dee and eve went out on a new session at once; bob came back with his retry.
    assert arrivals == [
        "ann@example.org",
        "cid@example.org",
        "dee@example.org",
        "eve@example.org",
        "bob@example.org",
    ]
