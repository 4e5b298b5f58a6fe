"""/metrics counters move as people and the pipeline act: signups, confirmations, unsubscribes,
events, deliveries by outcome, mails, send latency, queue depth and sweep recoveries.

The worker runs in-process here, so the web's /metrics also shows what the worker counted (in
production each process serves its own registry and Prometheus adds them up).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from notifier.clock import utcnow
from notifier.data.models import Delivery, Suppression
from notifier.pipeline import encode
from notifier.resources import Resources
from tests.conftest import PUBLIC_URL, run_worker
from tests.events_factory import signed_headers, status_change
from tests.factories import make_delivery, make_event, make_subscription
from tests.smtp_server import RecordingSMTP
from tests.test_metrics import METRICS_AUTH
from tests.test_subscriptions import (  # noqa: F401  # `resources` is a fixture override
    resources_closing_limits,
)

Client = TestClient[Any, Any]
NCT = "NCT05879978"
Key = tuple[str, frozenset[tuple[str, str]]]


async def scrape(client: Client) -> dict[Key, float]:
    resp = await client.get("/metrics", headers=METRICS_AUTH)
    assert resp.status == 200
    values: dict[Key, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            values[(s.name, frozenset(s.labels.items()))] = s.value
    return values


class Moves:
    """What changed between two scrapes, looked up by sample name and labels."""

    def __init__(self, before: dict[Key, float], after: dict[Key, float]) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)


async def moves_since(client: Client, before: dict[Key, float]) -> Moves:
    return Moves(before, await scrape(client))


async def test_signups_confirmations_and_unsubscribes(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    before = await scrape(client)
    assert (
        await client.post("/v1/subscriptions", json={"email": "ada@example.org", "study": NCT})
    ).status == 202
    bad = await client.post("/v1/subscriptions", json={"email": "ada@", "study": NCT})
    assert bad.status == 422
    bot = {"email": "bot@example.org", "study": NCT, "website": "http://spam"}
    assert (await client.post("/v1/subscriptions", json=bot)).status == 202
    await run_worker(resources)
    text = smtp.to("ada@example.org")[-1].message.get_body(("plain",))
    assert text is not None
    link = re.search(re.escape(PUBLIC_URL) + r"(/v1/confirm/[\w.-]+)", text.get_content())
    assert link
    assert (await client.post(link.group(1))).status == 200

    async with resources.sessions.begin() as session:
        first = await make_subscription(session, resources, email="bob@example.org")
        second = await make_subscription(
            session, resources, email="bob@example.org", label="NCT02856893"
        )
    one_click = f"/v1/unsubscribe/{resources.tokens.unsubscribe(first.id)}"
    page = f"/v1/unsubscribe/{resources.tokens.unsubscribe(second.id)}"
    assert (await client.post(one_click, data={"List-Unsubscribe": "One-Click"})).status == 200
    assert (await client.post(page, data={"via": "page"})).status == 200

    moved = await moves_since(client, before)
    # By result, never by the address's state (new, confirmed…): a honeypot is "accepted" too.
    assert moved("notifier_signups_total", result="accepted") == 2
    assert moved("notifier_signups_total", result="invalid") == 1
    assert moved("notifier_mails_total", kind="confirm") == 1
    assert moved("notifier_confirmations_total") == 1
    assert moved("notifier_unsubscribes_total", via="one_click") == 1
    assert moved("notifier_unsubscribes_total", via="link") == 1
    signups = {"route": "/v1/subscriptions", "method": "POST"}
    assert moved("notifier_http_requests_total", **signups, status="202") == 2
    assert moved("notifier_http_requests_total", **signups, status="422") == 1


async def test_events_and_deliveries_by_outcome(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    async with resources.sessions.begin() as session:
        for who in ("ada", "bob", "cy"):
            await make_subscription(session, resources, email=f"{who}@example.org", label=NCT)
    smtp.reject["bob@example.org"] = ["451 4.3.0 try again later"]  # once, then accepted
    smtp.reject["cy@example.org"] = "550 5.1.1 no such mailbox"
    before = await scrape(client)

    body = encode([status_change(NCT, "RECRUITING", "COMPLETED")])
    for _ in range(2):  # the pipeline retries: the second is a duplicate
        resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
        assert resp.status == 202
    forged = await client.post(
        "/v1/events", data=body, headers=signed_headers(body, secret="x" * 40)
    )
    assert forged.status == 401
    invalid = encode([{"event_id": "e-1", "nct_id": "NCT1"}])
    assert (
        await client.post("/v1/events", data=invalid, headers=signed_headers(invalid))
    ).status == 422
    waiting = await moves_since(client, before)
    assert waiting("notifier_queue_depth") == 1  # the fan-out job, before any worker runs

    await run_worker(resources)
    moved = await moves_since(client, before)
    assert moved("notifier_events_total", result="accepted", source="http") == 1
    assert moved("notifier_events_total", result="duplicate", source="http") == 1
    assert moved("notifier_events_total", result="unauthorized", source="http") == 1
    assert moved("notifier_events_total", result="rejected", source="http") == 1
    assert moved("notifier_deliveries_total", outcome="sent") == 2  # ada; bob on the retry
    assert moved("notifier_deliveries_total", outcome="retry") == 1
    assert moved("notifier_deliveries_total", outcome="failed") == 1
    assert moved("notifier_mails_total", kind="alert") == 2
    assert moved("notifier_send_seconds_count") == 4  # every SMTP transaction is timed
    assert moved("notifier_send_seconds_sum") > 0
    assert moved("notifier_queue_depth") == 0
    assert len(smtp.messages) == 2


async def test_suppressed_at_send_time_and_sweep_recoveries(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    async with resources.sessions.begin() as session:
        ada = await make_subscription(session, resources, email="ada@example.org", label=NCT)
        bob = await make_subscription(session, resources, email="bob@example.org", label=NCT)
        event = await make_event(session, nct_id=NCT, change_kind="new_study")
        late = await make_delivery(session, event=event, subscriber_id=ada.subscriber_id)
        # A lost job: pending for ten minutes, far past sweep_stale_after.
        lost = await make_delivery(session, event=event, subscriber_id=bob.subscriber_id)
        lost.next_attempt_at = utcnow() - timedelta(minutes=10)
        # Suppressed after the fan-out (a complaint arrived): checked again before sending.
        session.add(
            Suppression(email_hash=resources.email_hash("ada@example.org"), reason="complaint")
        )
    before = await scrape(client)
    await resources.redis.enqueue_job("send_deliveries", [late.id])
    await resources.redis.enqueue_job("sweep")
    await run_worker(resources)

    moved = await moves_since(client, before)
    assert moved("notifier_deliveries_total", outcome="suppressed") == 1
    assert moved("notifier_deliveries_total", outcome="skipped") == 1
    assert moved("notifier_sweep_recovered_total") == 1
    assert moved("notifier_deliveries_total", outcome="sent") == 1
    assert [m.rcpt_to for m in smtp.messages] == ["bob@example.org"]
    async with resources.sessions() as session:
        statuses = dict((await session.execute(select(Delivery.id, Delivery.status))).all())
    assert statuses == {late.id: "skipped", lost.id: "sent"}
