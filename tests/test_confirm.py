"""Confirm links: only a POST confirms, once; bad, used and expired links change nothing."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from urllib.parse import urlencode

import pytest
import time_machine
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select, update

from notifier.clock import utcnow
from notifier.core.tokens import Tokens
from notifier.data.models import Subscriber, Subscription
from notifier.data.queries import suppress
from notifier.resources import Resources
from tests.conftest import SECRET_KEYS, SITE_ORIGIN, run_worker
from tests.smtp_server import RecordingSMTP
from tests.test_subscriptions import (  # noqa: F401  # `resources` is a fixture override
    ADA,
    FORM,
    STUDY,
    Client,
    confirm_path,
    resources_closing_limits,
    signup,
    snapshot,
    subscriber,
    subscriptions,
)

JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}


async def signed_up(client: Client, resources: Resources, smtp: RecordingSMTP) -> str:
    assert (await signup(client)).status == 202
    await run_worker(resources)
    return confirm_path(smtp)


async def set_status(resources: Resources, status: str) -> None:
    async with resources.sessions.begin() as session:
        await session.execute(update(Subscription).values(status=status, unsubscribed_at=utcnow()))


def _tamper(token: str) -> list[str]:
    rest = token.partition(".")[2]
    sig = token.rindex(".") + 1
    # Flip the signature's first character (its trailing one carries padding bits).
    flipped = token[:sig] + ("g" if token[sig] != "g" else "A") + token[sig + 1 :]
    forged_payload = URLSafeTimedSerializer("x").dumps({"s": 999, "n": "0" * 32}).split(".")[0]
    return [flipped, token[:-6], "garbage", f"{forged_payload}.{rest}", token + "x"]


async def test_tampered_tokens_are_404_and_change_nothing(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    path = await signed_up(client, resources, smtp)
    token = path.rsplit("/", 1)[1]
    before = await snapshot(resources)
    for bad in _tamper(token):
        for method in ("GET", "POST"):
            resp = await client.request(method, f"/v1/confirm/{bad}", headers=JSON)
            assert resp.status == 404, (bad, method)
            assert (await resp.json())["error"]
        page = await client.get(f"/v1/confirm/{bad}", headers=HTML)
        assert page.status == 404
        assert "text/html" in page.headers["Content-Type"]
    assert await snapshot(resources) == before
    assert (await client.get(path)).status == 200  # the genuine link still works


async def test_wrong_purpose_and_unknown_key_are_404(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    await signed_up(client, resources, smtp)
    person = await subscriber(resources)
    [row] = await subscriptions(resources)
    assert person.confirm_nonce is not None
    stranger = Tokens(["someone-else-" + "z" * 40], 3600)
    wrong = [
        resources.tokens.unsubscribe(row.id),
        resources.tokens.manage(person.id),
        resources.tokens.dumps("manage", {"s": person.id, "n": person.confirm_nonce}),
        stranger.confirm(person.id, person.confirm_nonce),
    ]
    before = await snapshot(resources)
    for token in wrong:
        assert (await client.get(f"/v1/confirm/{token}")).status == 404
        assert (await client.post(f"/v1/confirm/{token}", headers=JSON)).status == 404
    assert await snapshot(resources) == before


async def test_a_token_signed_with_an_older_key_still_works(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    await signed_up(client, resources, smtp)
    person = await subscriber(resources)
    assert person.confirm_nonce is not None
    old = Tokens(SECRET_KEYS[:1], 3600).confirm(person.id, person.confirm_nonce)
    resp = await client.post(f"/v1/confirm/{old}", headers=JSON)
    assert resp.status == 200


async def test_expired_tokens_are_410_and_change_nothing(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    with time_machine.travel(utcnow(), tick=True) as clock:
        path = await signed_up(client, resources, smtp)
        clock.shift(timedelta(hours=71))
        assert (await client.get(path)).status == 200
        clock.shift(timedelta(hours=1, seconds=5))
        before = await snapshot(resources)
        page = await client.get(path, headers=HTML)
        assert page.status == 410
        assert f'href="{SITE_ORIGIN}"' in await page.text()  # a way to sign up again
        resp = await client.post(path, headers=JSON)
        assert resp.status == 410
        assert "sign up again" in (await resp.json())["error"]
        assert (await client.post(path, headers=HTML)).status == 410
        assert await snapshot(resources) == before
        [row] = await subscriptions(resources)
        assert row.status == "pending"

        # Signing up again mails a fresh link that works.
        assert (await signup(client)).status == 202
        await run_worker(resources)
        assert (await client.post(confirm_path(smtp), headers=JSON)).status == 200


async def test_a_used_token_cannot_resubscribe_someone_who_unsubscribed_since(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    path = await signed_up(client, resources, smtp)
    assert (await client.post(path, headers=JSON)).status == 200
    await set_status(resources, "unsubscribed")  # as the unsubscribe link would
    before = await snapshot(resources)
    assert (await client.get(path)).status == 410
    assert (await client.post(path, headers=JSON)).status == 410
    assert await snapshot(resources) == before

    # Even once the address is pending again, the old link stays dead.
    with time_machine.travel(utcnow() + timedelta(minutes=11), tick=True):
        assert (await signup(client)).status == 202
        assert (await client.post(path, headers=JSON)).status == 410
        [row] = await subscriptions(resources)
        assert row.status == "pending"
        await run_worker(resources)
        assert confirm_path(smtp) != path


async def test_an_unused_token_cannot_confirm_what_was_unsubscribed_meanwhile(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    path = await signed_up(client, resources, smtp)
    await set_status(resources, "unsubscribed")
    before = await snapshot(resources)
    assert (await client.get(path)).status == 410
    assert (await client.post(path, headers=JSON)).status == 410
    assert await snapshot(resources) == before


async def test_suppressed_after_signup_cannot_confirm(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    path = await signed_up(client, resources, smtp)
    async with resources.sessions.begin() as session:
        await suppress(session, resources.email_hash(ADA), "complaint")
    assert (await client.post(path, headers=JSON)).status == 410
    [row] = await subscriptions(resources)
    assert row.status == "unsubscribed"


async def test_two_posts_at_once_confirm_once(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    path = await signed_up(client, resources, smtp)
    statuses = sorted(
        r.status for r in await asyncio.gather(*(client.post(path, headers=JSON) for _ in range(5)))
    )
    assert statuses == [200, 410, 410, 410, 410]
    person = await subscriber(resources)
    [row] = await subscriptions(resources)
    assert row.status == "confirmed"
    assert person.first_confirmed_at == row.confirmed_at


async def test_post_confirms_only_what_the_page_listed(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    path = await signed_up(client, resources, smtp)
    page = await (await client.get(path)).text()
    listed = re.findall(r'name="subscription" value="(\d+)"', page)
    # A signup after the page was shown (its mail held back by the per-address limit).
    assert (await signup(client, study=None, condition="Asthma")).status == 202
    # An id of another address in the form is ignored.
    assert (await signup(client, email="other@example.org")).status == 202
    others = [r.id for r in await subscriptions(resources) if r.label == STUDY]
    resp = await client.post(
        path,
        data=urlencode([("subscription", i) for i in [*listed, *map(str, others)]]),
        headers={"Content-Type": FORM, **JSON},
    )
    assert resp.status == 200
    assert [s["label"] for s in (await resp.json())["subscriptions"]] == [STUDY]
    async with resources.sessions() as session:
        rows = (
            await session.execute(
                select(Subscriber.email, Subscription.label, Subscription.status).join(
                    Subscriber, Subscriber.id == Subscription.subscriber_id
                )
            )
        ).all()
    assert sorted(tuple(r) for r in rows) == [
        (ADA, "Asthma", "pending"),
        (ADA, STUDY, "confirmed"),
        ("other@example.org", STUDY, "pending"),
    ]


async def test_json_post_without_ids_confirms_every_pending_subscription(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    path = await signed_up(client, resources, smtp)
    assert (await signup(client, study=None, condition="Asthma", mesh_id="D001249")).status == 202
    resp = await client.post(path, headers=JSON)
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "confirmed"
    assert {(s["kind"], s["label"], s["mesh_id"]) for s in body["subscriptions"]} == {
        ("study", STUDY, None),
        ("condition", "Asthma", "D000001249"),
    }


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("text/plain", b"hello", 415),
        (FORM, b"subscription=abc", 400),
        ("application/json", b'{"subscriptions": "1"}', 400),
        ("application/json", b'{"subscriptions": [true]}', 400),
        ("application/json", b"{", 400),
    ],
)
async def test_unreadable_confirm_bodies_are_4xx_and_change_nothing(
    client: Client,
    resources: Resources,
    smtp: RecordingSMTP,
    content_type: str,
    body: bytes,
    status: int,
) -> None:
    path = await signed_up(client, resources, smtp)
    before = await snapshot(resources)
    resp = await client.post(path, data=body, headers={"Content-Type": content_type, **JSON})
    assert resp.status == status
    assert (await resp.json())["error"]
    assert await snapshot(resources) == before


async def test_pending_older_than_30_days_is_purged_by_the_job(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    start = utcnow()
    with time_machine.travel(start, tick=True) as clock:
        assert (await signup(client, email="old@example.org")).status == 202
        assert (await signup(client, email="kept@example.org")).status == 202
        assert (await signup(client, email="kept@example.org", study="NCT00000001")).status == 202
        await run_worker(resources)
        confirmed = confirm_path(smtp, "kept@example.org")
        resp = await client.post(
            confirmed,
            data=urlencode({"subscription": (await subscriptions(resources))[1].id}),
            headers={"Content-Type": FORM},
        )
        assert resp.status == 200
        clock.shift(timedelta(days=29))
        assert (await signup(client, email="recent@example.org")).status == 202
        clock.shift(timedelta(days=1, hours=1))

        await resources.redis.enqueue_job("purge_pending")
        await run_worker(resources)

    async with resources.sessions() as session:
        rows = (
            await session.execute(
                select(Subscriber.email, Subscription.match_key, Subscription.status).join(
                    Subscriber, Subscriber.id == Subscription.subscriber_id
                )
            )
        ).all()
        people = set(await session.scalars(select(Subscriber.email)))
    assert sorted(tuple(r) for r in rows) == [
        ("kept@example.org", f"study:{STUDY}", "confirmed"),
        ("recent@example.org", f"study:{STUDY}", "pending"),
    ]
    # The address that never confirmed anything is gone with its last pending request.
    assert people == {"kept@example.org", "recent@example.org"}


def test_confirm_pages_have_no_script() -> None:
    from notifier.mail.templates import make_environment

    env = make_environment()
    for name in ("confirm", "confirmed", "expired", "check_inbox"):
        source, _, _ = env.loader.get_source(env, f"pages/{name}.html")  # type: ignore[union-attr]
        assert "<script" not in source.lower()
        assert "http-equiv" not in source.lower()  # no meta refresh either
