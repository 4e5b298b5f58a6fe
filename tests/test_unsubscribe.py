"""Unsubscribe links: RFC 8058 one-click from mail clients, the page button, tokens, rotation."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import time_machine
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.clock import utcnow
from notifier.core.signing import HEADER
from notifier.core.tokens import Tokens
from notifier.data.models import Delivery, Subscription
from notifier.metrics import REGISTRY
from notifier.pipeline import encode, sign
from notifier.resources import Resources
from tests.conftest import EVENT_SECRETS, PUBLIC_URL, SECRET_KEYS, run_worker
from tests.factories import event_payload, make_delivery, make_event, make_subscription
from tests.smtp_server import RecordingSMTP

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


async def _subscription(resources: Resources, **kwargs: Any) -> Subscription:
    async with resources.sessions.begin() as session:
        return await make_subscription(session, resources, **kwargs)


async def _reload(resources: Resources, subscription_id: int) -> Subscription | None:
    async with resources.sessions.begin() as session:
        return await session.get(Subscription, subscription_id)


def _path(resources: Resources, subscription_id: int) -> str:
    return f"/v1/unsubscribe/{resources.tokens.unsubscribe(subscription_id)}"


def _unsubscribes(via: str) -> float:
    return REGISTRY.get_sample_value("notifier_unsubscribes_total", {"via": via}) or 0.0


async def test_get_shows_one_button_and_changes_nothing(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    path = _path(resources, sub.id)
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 200
    page = await resp.text()
    assert 'method="post"' in page
    assert f'action="{path}"' in page
    assert page.count(f'action="{path}"') == 1  # the one button that unsubscribes
    assert "NCT05879978" in page
    # A way to fewer mails instead of none, without handing a link scanner the preference
    # centre (issue 18, finding 10): a button that mails the address a manage link.
    assert "/v1/manage/" not in page
    assert 'action="/v1/manage"' in page
    assert "Mail me a link to manage my alerts" in page
    assert resp.headers["Cache-Control"] == "no-store"
    again = await _reload(resources, sub.id)
    assert again is not None
    assert again.status == "confirmed"
    assert again.unsubscribed_at is None


def _multipart() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("List-Unsubscribe", "One-Click")
    form.add_field("extra", b"x" * 10, filename="f.bin")  # forces multipart/form-data
    return form


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(ONE_CLICK, {}, id="urlencoded"),
        pytest.param("List-Unsubscribe=One-Click", {}, id="urlencoded-no-type"),
        pytest.param("multipart", {}, id="multipart"),
        pytest.param(None, {}, id="empty"),
        pytest.param(b"", {"Content-Type": "text/plain"}, id="empty-text-plain"),
        pytest.param(b"\xff\xfe{not a form", {"Content-Type": "application/json"}, id="junk"),
        pytest.param(
            b"--broken\r\nno headers",
            {"Content-Type": "multipart/form-data; boundary=zzz"},
            id="broken-multipart",
        ),
    ],
)
async def test_one_click_post_unsubscribes_with_any_body(
    client: TestClient[Any, Any], resources: Resources, body: Any, headers: dict[str, str]
) -> None:
    sub = await _subscription(resources)
    before = _unsubscribes("one_click")
    data = _multipart() if body == "multipart" else body
    resp = await client.post(
        _path(resources, sub.id), data=data, headers=headers, allow_redirects=False
    )
    assert resp.status == 200
    assert "Location" not in resp.headers
    assert "You're unsubscribed" in await resp.text()
    after = await _reload(resources, sub.id)
    assert after is not None
    assert (after.status, after.unsubscribe_reason) == ("unsubscribed", "one_click")
    assert after.unsubscribed_at is not None
    assert _unsubscribes("one_click") == before + 1


async def test_repeating_is_harmless(client: TestClient[Any, Any], resources: Resources) -> None:
    sub = await _subscription(resources)
    path = _path(resources, sub.id)
    assert (await client.post(path, data=ONE_CLICK)).status == 200
    first = await _reload(resources, sub.id)
    before = _unsubscribes("one_click")
    with time_machine.travel(utcnow() + timedelta(hours=1), tick=True):
        resp = await client.post(path, data=ONE_CLICK, headers={"Accept": "application/json"})
    assert resp.status == 200
    assert await resp.json() == {"status": "unsubscribed"}
    second = await _reload(resources, sub.id)
    assert first is not None
    assert second is not None
    assert second.unsubscribed_at == first.unsubscribed_at  # the first time stands
    assert _unsubscribes("one_click") == before  # counted once


async def test_page_button_is_counted_as_link(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    other = await _subscription(resources, label="NCT03801200")
    before = _unsubscribes("link")
    resp = await client.post(_path(resources, sub.id), data={"via": "page"})
    assert resp.status == 200
    page = await resp.text()
    assert "NCT05879978" in page
    assert "/v1/manage/" not in page  # a button mails a manage link instead (issue 18)
    assert "Mail me a link to manage my alerts" in page
    after = await _reload(resources, sub.id)
    assert after is not None
    assert (after.status, after.unsubscribe_reason) == ("unsubscribed", "link")
    assert _unsubscribes("link") == before + 1
    untouched = await _reload(resources, other.id)
    assert untouched is not None
    assert untouched.status == "confirmed"  # only the one subscription ends


async def test_token_from_a_rotated_key_still_works_months_later(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    # Minted a year ago, when the (now older) first key was the only one and so signed everything.
    with time_machine.travel(utcnow() - timedelta(days=365)):
        old_token = Tokens(SECRET_KEYS[:1], 3600).unsubscribe(sub.id)
    assert resources.settings.secret_keys[-1] != SECRET_KEYS[0]  # a newer key signs today
    assert old_token != resources.tokens.unsubscribe(sub.id)
    resp = await client.post(f"/v1/unsubscribe/{old_token}", data=ONE_CLICK)
    assert resp.status == 200
    after = await _reload(resources, sub.id)
    assert after is not None
    assert after.status == "unsubscribed"


def _tampered(resources: Resources, subscription_id: int) -> list[str]:
    good = resources.tokens.unsubscribe(subscription_id)
    flipped = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
    forged = Tokens(["an-unknown-key-" + "z" * 40], 3600).unsubscribe(subscription_id)
    wrong_purpose = resources.tokens.manage(subscription_id)
    return [flipped, forged, wrong_purpose, "not-a-token", good + "x"]


async def test_tampered_tokens_get_404_and_change_nothing(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    for token in _tampered(resources, sub.id):
        resp = await client.post(f"/v1/unsubscribe/{token}", data=ONE_CLICK)
        assert resp.status == 404, token
        assert "unknown or damaged" in await resp.text()
        assert (await client.get(f"/v1/unsubscribe/{token}")).status == 404
        json_resp = await client.post(
            f"/v1/unsubscribe/{token}", headers={"Accept": "application/json"}
        )
        assert json_resp.status == 404
        assert (await json_resp.json())["error"]
    after = await _reload(resources, sub.id)
    assert after is not None
    assert after.status == "confirmed"
    assert after.unsubscribed_at is None


async def test_token_of_a_deleted_subscription_answers_unsubscribed(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    path = _path(resources, sub.id)
    async with resources.sessions.begin() as session:
        await session.delete(await session.get(Subscription, sub.id))
    resp = await client.post(path, data=ONE_CLICK)
    assert resp.status == 200
    assert "You're unsubscribed" in await resp.text()
    resp = await client.get(path)
    assert resp.status == 200
    assert "You're unsubscribed" in await resp.text()


# ---- end to end with the send job ------------------------------------------------------------


async def _post_event(client: TestClient[Any, Any], payload: dict[str, Any]) -> None:
    body = encode([payload])
    resp = await client.post(
        "/v1/events",
        data=body,
        headers={HEADER: sign(body, EVENT_SECRETS[0]), "Content-Type": "application/json"},
    )
    assert resp.status == 202, await resp.text()


async def test_list_unsubscribe_of_a_real_notification_works_with_one_click(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    sub = await _subscription(resources, email="ada@example.org")
    await _post_event(client, event_payload(nct_id="NCT05879978"))
    await run_worker(resources)
    [received] = smtp.to("ada@example.org")
    message = received.message
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = message["List-Unsubscribe"]
    assert header.startswith(f"<{PUBLIC_URL}/v1/unsubscribe/")
    assert header.endswith(">")
    url = header[1:-1]
    # The body carries the same link, and a manage link.
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert url in text.get_content()
    assert url in html.get_content()
    assert f"{PUBLIC_URL}/v1/manage/" in text.get_content()

    # What Gmail's button does: a bare POST, no cookies, no CSRF token, no Origin.
    client.session.cookie_jar.clear()
    resp = await client.post(
        urlsplit(url).path,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        allow_redirects=False,
    )
    assert resp.status == 200
    assert "Location" not in resp.headers
    assert "Set-Cookie" not in resp.headers
    after = await _reload(resources, sub.id)
    assert after is not None
    assert (after.status, after.unsubscribe_reason) == ("unsubscribed", "one_click")

    # And nothing more reaches the address.
    await _post_event(client, event_payload(nct_id="NCT05879978", change_kind="status_changed"))
    await run_worker(resources)
    assert len(smtp.to("ada@example.org")) == 1


async def test_deliveries_queued_before_unsubscribing_are_never_sent(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    async with resources.sessions.begin() as session:
        sub = await make_subscription(session, resources, email="ada@example.org")
        ids = []
        for _ in range(5):
            event = await make_event(session)
            delivery = await make_delivery(session, event=event, subscriber_id=sub.subscriber_id)
            ids.append(delivery.id)
    await resources.redis.enqueue_job("send_deliveries", ids)

    resp = await client.post(_path(resources, sub.id), data=ONE_CLICK)
    assert resp.status == 200
    await run_worker(resources)

    assert smtp.transactions == 0
    async with resources.sessions.begin() as session:
        statuses = list(await session.scalars(select(Delivery.status).where(Delivery.id.in_(ids))))
    assert statuses == ["skipped"] * 5


async def test_one_click_on_a_two_reason_mail_ends_both_and_offers_to_undo_each_for_a_day(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    study = await _subscription(resources, email="ada@example.org")
    condition = await _subscription(
        resources, email="ada@example.org", kind="condition", label="Neuroendocrine Tumors"
    )
    other = await _subscription(resources, email="ada@example.org", label="NCT05304754")
    await _post_event(client, event_payload(nct_id="NCT05879978", change_kind="new_study"))
    await run_worker(resources)
    [received] = smtp.to("ada@example.org")
    text = received.message.get_body(("plain",))
    assert text is not None
    assert text.get_content().count("/v1/unsubscribe/") == 2  # the in-body links stay, one each
    url = received.message["List-Unsubscribe"].strip("<>")
    assert url not in text.get_content()  # the header's link is its own: it ends both

    client.session.cookie_jar.clear()
    resp = await client.post(urlsplit(url).path, data=ONE_CLICK, headers={"Accept": "text/html"})
    assert resp.status == 200
    page = await resp.text()
    statuses = {s: (await _reload(resources, s)).status for s in (study.id, condition.id)}  # type: ignore[union-attr]
    assert statuses == {study.id: "unsubscribed", condition.id: "unsubscribed"}
    assert (await _reload(resources, other.id)).status == "confirmed"  # type: ignore[union-attr]
    # The page says what ended (the study by its title), and how to undo each.
    assert "You will get no more alerts about any of these" in page
    assert "Neuroendocrine Tumors" in page
    assert "(NCT05879978)" in page
    assert "A Study to" in page or "“" in page
    undo = re.findall(r'href="(/v1/resubscribe/[^"]+)"', page)
    assert len(undo) == 2
    assert "You still get 1 other alert" in page

    # A GET of the undo link changes nothing; its POST re-subscribes that one only.
    assert (await client.get(undo[1])).status == 200
    assert (await _reload(resources, condition.id)).status == "unsubscribed"  # type: ignore[union-attr]
    done = await client.post(undo[1], headers={"Accept": "text/html"})
    assert done.status == 200
    assert "You're subscribed again" in await done.text()
    assert (await _reload(resources, condition.id)).status == "confirmed"  # type: ignore[union-attr]
    assert (await _reload(resources, study.id)).status == "unsubscribed"  # type: ignore[union-attr]
    assert (await client.post(undo[1])).status == 200  # a second press changes nothing

    # A day later the other undo link has expired.
    with time_machine.travel(utcnow() + timedelta(days=1, minutes=1)):
        late = await client.post(undo[0], headers={"Accept": "text/html"})
    assert late.status == 410
    assert (await _reload(resources, study.id)).status == "unsubscribed"  # type: ignore[union-attr]


async def test_a_last_unsubscribe_says_nothing_is_left_and_offers_a_way_back(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    resp = await client.post(_path(resources, sub.id), data={"via": "page"})
    page = await resp.text()
    assert "You get no alerts from us now" in page
    assert "other alerts" not in page
    assert "everything" not in page
    assert re.search(r'href="/v1/resubscribe/[^"]+"', page)
    assert "sign up on" in page  # the site, in production its first allowed origin
    manage = await client.get(f"/v1/manage/{resources.tokens.manage(sub.subscriber_id)}")
    listing = await manage.text()
    assert "Stop everything" not in listing
    assert "You get no alerts from us now" in listing


async def test_resubscribe_refuses_an_unsubscribe_from_everything(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    manage = f"/v1/manage/{resources.tokens.manage(sub.subscriber_id)}"
    await client.post(manage, data={"action": "unsubscribe_all"})
    ended = await _reload(resources, sub.id)
    assert ended is not None
    assert ended.unsubscribed_at is not None
    token = resources.tokens.resubscribe(sub.id, int(ended.unsubscribed_at.timestamp()))
    resp = await client.post(f"/v1/resubscribe/{token}")
    assert resp.status == 410
    assert (await _reload(resources, sub.id)).status == "unsubscribed"  # type: ignore[union-attr]
    assert (await client.post("/v1/resubscribe/not-a-token")).status == 404
