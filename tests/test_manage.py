"""Preference centre: list, change frequency, pause/resume, unsubscribe one or all; manage links."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.data import queries
from notifier.data.models import Subscriber, Subscription, Suppression
from notifier.resources import Resources
from tests.conftest import PUBLIC_URL, SITE_ORIGIN, run_worker
from tests.factories import make_subscription
from tests.smtp_server import RecordingSMTP

ADA = "ada@example.org"


async def _two_subscriptions(resources: Resources) -> tuple[Subscription, Subscription]:
    async with resources.sessions.begin() as session:
        study = await make_subscription(session, resources, email=ADA)
        condition = await make_subscription(
            session,
            resources,
            email=ADA,
            kind="condition",
            label="Small cell lung cancer",
            frequency="weekly",
        )
        # Someone else's, which ADA's page must neither show nor change.
        await make_subscription(session, resources, email="bob@example.org", label="NCT03801200")
    return study, condition


async def _all(resources: Resources) -> dict[int, Subscription]:
    async with resources.sessions.begin() as session:
        return {s.id: s for s in await session.scalars(select(Subscription))}


def _states(rows: dict[int, Subscription]) -> list[tuple[int, str, bool, str]]:
    return [(s.id, s.status, s.paused, s.frequency) for s in rows.values()]


def _path(resources: Resources, subscriber_id: int) -> str:
    return f"/v1/manage/{resources.tokens.manage(subscriber_id)}"


async def test_page_lists_every_subscription_of_the_address_only(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    study, condition = await _two_subscriptions(resources)
    before = await _all(resources)
    resp = await client.get(_path(resources, study.subscriber_id))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    page = await resp.text()
    assert "NCT05879978" in page
    assert "Small cell lung cancer" in page
    assert "NCT03801200" not in page
    assert "Unsubscribe from everything" in page
    assert "<script" not in page  # works without JavaScript
    # Every select has a label tied to it (screen readers, keyboard users).
    for select_id in re.findall(r'<select id="([^"]+)"', page):
        assert f'<label for="{select_id}">' in page
    assert f'name="subscription" value="{condition.id}"' in page
    assert 'value="weekly" selected' in page
    assert _states(await _all(resources)) == _states(before)  # looking changes nothing


async def test_json_listing(client: TestClient[Any, Any], resources: Resources) -> None:
    study, condition = await _two_subscriptions(resources)
    resp = await client.get(
        _path(resources, study.subscriber_id), headers={"Accept": "application/json"}
    )
    body = await resp.json()
    assert body["message"] is None
    assert [
        (s["id"], s["kind"], s["label"], s["frequency"], s["paused"], s["status"])
        for s in body["subscriptions"]
    ] == [
        (study.id, "study", "NCT05879978", "instant", False, "confirmed"),
        (condition.id, "condition", "Small cell lung cancer", "weekly", False, "confirmed"),
    ]


async def test_frequency_pause_resume_and_unsubscribe_one(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    study, condition = await _two_subscriptions(resources)
    path = _path(resources, study.subscriber_id)

    resp = await client.post(
        path, data={"action": "frequency", "subscription": str(study.id), "frequency": "daily"}
    )
    assert resp.status == 200
    assert "now come once a day" in await resp.text()
    assert (await _all(resources))[study.id].frequency == "daily"

    resp = await client.post(path, data={"action": "pause", "subscription": str(condition.id)})
    assert "are paused" in await resp.text()
    assert (await _all(resources))[condition.id].paused is True
    resp = await client.post(
        path,
        json={"action": "resume", "subscription": condition.id},
        headers={"Accept": "application/json"},
    )
    assert (await resp.json())["message"] == "Alerts about Small cell lung cancer are resumed."
    assert (await _all(resources))[condition.id].paused is False

    resp = await client.post(path, data={"action": "unsubscribe", "subscription": str(study.id)})
    assert resp.status == 200
    rows = await _all(resources)
    assert (rows[study.id].status, rows[study.id].unsubscribe_reason) == ("unsubscribed", "manage")
    assert rows[condition.id].status == "confirmed"
    async with resources.sessions.begin() as session:
        assert not await queries.is_suppressed(session, resources.email_hash(ADA))


async def test_unsubscribe_from_everything_suppresses_the_address(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    study, condition = await _two_subscriptions(resources)
    resp = await client.post(
        _path(resources, study.subscriber_id), data={"action": "unsubscribe_all"}
    )
    assert resp.status == 200
    assert "every alert" in await resp.text()
    rows = await _all(resources)
    assert {rows[i].status for i in (study.id, condition.id)} == {"unsubscribed"}
    assert {rows[i].unsubscribe_reason for i in (study.id, condition.id)} == {"manage"}
    assert [s.status for s in rows.values() if s.id not in (study.id, condition.id)] == [
        "confirmed"
    ]  # bob keeps his
    async with resources.sessions.begin() as session:
        entry = await session.scalar(
            select(Suppression).where(Suppression.email_hash == resources.email_hash(ADA))
        )
    assert entry is not None
    assert entry.reason == "unsubscribed_all"


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"action": "explode", "subscription": "{study}"}, 422),
        ({"action": "frequency", "subscription": "{study}", "frequency": "hourly"}, 422),
        ({"action": "frequency", "subscription": "{study}"}, 422),
        ({"action": "pause"}, 422),
        ({"action": "pause", "subscription": "abc"}, 422),
        ({"action": "pause", "subscription": "{bob}"}, 404),
        ({"action": "unsubscribe", "subscription": "{bob}"}, 404),
        ({"action": "pause", "subscription": "999999"}, 404),
        ({}, 422),
    ],
)
async def test_bad_changes_are_refused_and_change_nothing(
    client: TestClient[Any, Any], resources: Resources, form: dict[str, str], status: int
) -> None:
    study, _ = await _two_subscriptions(resources)
    rows = await _all(resources)
    bob = next(s.id for s in rows.values() if s.label == "NCT03801200")
    data = {k: v.format(study=study.id, bob=bob) for k, v in form.items()}
    resp = await client.post(
        _path(resources, study.subscriber_id), data=data, headers={"Accept": "application/json"}
    )
    assert resp.status == status
    assert (await resp.json())["error"]
    assert _states(await _all(resources)) == _states(rows)


async def test_an_ended_subscription_cannot_be_paused_or_changed(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    async with resources.sessions.begin() as session:
        ended = await make_subscription(session, resources, status="unsubscribed")
    path = _path(resources, ended.subscriber_id)
    for action in ({"action": "resume"}, {"action": "frequency", "frequency": "daily"}):
        resp = await client.post(
            path, data={**action, "subscription": str(ended.id)}, headers={"Accept": "text/html"}
        )
        assert resp.status == 422
        assert "sign up again" in await resp.text()
    row = (await _all(resources))[ended.id]
    assert (row.status, row.paused, row.frequency) == ("unsubscribed", False, "instant")


async def test_tampered_or_erased(client: TestClient[Any, Any], resources: Resources) -> None:
    study, _ = await _two_subscriptions(resources)
    good = resources.tokens.manage(study.subscriber_id)
    for token in (good[:-2] + "xx", resources.tokens.unsubscribe(study.subscriber_id)):
        assert (await client.get(f"/v1/manage/{token}")).status == 404
        resp = await client.post(f"/v1/manage/{token}", data={"action": "unsubscribe_all"})
        assert resp.status == 404
    assert {s.status for s in (await _all(resources)).values()} == {"confirmed"}
    async with resources.sessions.begin() as session:
        await session.delete(await session.get(Subscriber, study.subscriber_id))
    resp = await client.get(f"/v1/manage/{good}")
    assert resp.status == 200
    assert "follows nothing" in await resp.text()
    assert (
        await client.post(f"/v1/manage/{good}", data={"action": "unsubscribe_all"})
    ).status == 200


# ---- POST /v1/manage: a manage link by mail --------------------------------------------------


async def test_manage_link_mail_for_a_known_address(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    await _two_subscriptions(resources)
    resp = await client.post("/v1/manage", json={"email": " Ada@Example.org "})
    assert resp.status == 202
    assert await resp.json() == {"status": "sent"}
    await run_worker(resources)
    [mail] = smtp.to(ADA)
    message = mail.message
    assert message["Subject"].startswith("Your alert settings")
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    links = re.findall(rf"{re.escape(PUBLIC_URL)}/v1/manage/\S+", text.get_content())
    assert len(links) == 1
    assert links[0] in html.get_content()
    resp = await client.get(urlsplit(links[0]).path)
    assert resp.status == 200
    assert "NCT05879978" in await resp.text()


async def test_same_answer_and_no_mail_for_unknown_or_suppressed(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email="gone@example.org")
        await queries.suppress(session, resources.email_hash("gone@example.org"), "complaint")
    answers = []
    for email in ("nobody@example.org", "gone@example.org"):
        resp = await client.post("/v1/manage", json={"email": email})
        answers.append((resp.status, await resp.json()))
    assert answers == [(202, {"status": "sent"})] * 2
    await run_worker(resources)
    assert smtp.transactions == 0


async def test_form_post_gets_a_page(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    await _two_subscriptions(resources)
    resp = await client.post("/v1/manage", data={"email": ADA}, allow_redirects=False)
    assert resp.status == 202
    assert "Check your inbox" in await resp.text()
    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1


async def test_invalid_address_is_422(client: TestClient[Any, Any], resources: Resources) -> None:
    for body in ({"email": "not an address"}, {"email": ""}, {}, [1]):
        resp = await client.post("/v1/manage", json=body)
        assert resp.status == 422, body
        assert "email" in (await resp.json()).get("fields", {}) or body == [1]
    resp = await client.post(
        "/v1/manage", data=b"{broken", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 422


async def test_rate_limits_per_address_and_per_ip(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    await _two_subscriptions(resources)
    limit = resources.settings.ip_requests_per_minute
    statuses = [(await client.post("/v1/manage", json={"email": ADA})).status for _ in range(limit)]
    assert statuses == [202] * limit
    resp = await client.post("/v1/manage", json={"email": ADA})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) > 0
    await run_worker(resources)
    # Twenty requests, one mail: the address's own allowance holds too.
    assert len(smtp.to(ADA)) == 1


async def test_the_website_may_ask_with_fetch(client: TestClient[Any, Any]) -> None:
    resp = await client.options(
        "/v1/manage",
        headers={
            "Origin": SITE_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type",
        },
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == SITE_ORIGIN
