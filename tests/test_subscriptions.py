"""POST /v1/subscriptions: double opt-in end to end, identical answers, abuse limits, bad input."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
import time_machine
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, update

from notifier.clock import utcnow
from notifier.data.models import Subscriber, Subscription
from notifier.data.queries import suppress
from notifier.resources import Resources
from tests.conftest import PUBLIC_URL, SITE_ORIGIN, run_worker
from tests.smtp_server import RecordingSMTP

Client = TestClient[Any, Any]
ADA = "ada@example.org"
STUDY = "NCT05879978"
LINK = re.compile(re.escape(PUBLIC_URL) + r"(/v1/confirm/[A-Za-z0-9_.\-]+)")
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(name="resources")
async def resources_closing_limits(resources: Resources) -> AsyncIterator[Resources]:
    """The shared fixture, plus closing the rate limiter's own Redis client.

    open_resources() does not close it (the limits library opens a second client), so its socket
    would surface later as a ResourceWarning in whichever test runs when it is collected.
    """
    yield resources
    bridge: Any = resources.limits_storage.bridge  # the redis-py bridge; typed as its base
    await bridge.get_connection().aclose()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # The test client is the proxy: X-Forwarded-For then stands for distinct callers.
    return {"trusted_proxies": ["127.0.0.1/32"]}


async def signup(
    client: Client, *, ip: str | None = None, form: bool = False, **fields: Any
) -> ClientResponse:
    body = {k: v for k, v in {"email": ADA, "study": STUDY, **fields}.items() if v is not None}
    headers = {"User-Agent": "TestBrowser/1.0"}
    if ip:
        headers["X-Forwarded-For"] = ip
    if form:
        headers["Content-Type"] = FORM
        headers["Accept"] = "text/html"
        body = {k: str(v).lower() if isinstance(v, bool) else v for k, v in body.items()}
        return await client.post(
            "/v1/subscriptions", data=urlencode(body), headers=headers, allow_redirects=False
        )
    return await client.post("/v1/subscriptions", json=body, headers=headers)


def parts(message: Any) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    return text, html


def confirm_path(smtp: RecordingSMTP, email: str = ADA) -> str:
    """The confirm link of the newest mail to `email`, as a path on the test server."""
    text, _ = parts(smtp.to(email)[-1].message)
    match = LINK.search(text)
    assert match, text
    return match.group(1)


async def snapshot(resources: Resources) -> list[tuple[Any, ...]]:
    """Every subscriber and subscription column: to prove that something changed nothing."""
    async with resources.sessions() as session:
        people = (await session.execute(select(Subscriber).order_by(Subscriber.id))).scalars()
        subs = (await session.execute(select(Subscription).order_by(Subscription.id))).scalars()
        return [
            tuple(getattr(row, c.key) for c in type(row).__table__.columns)
            for row in [*people, *subs]
        ]


async def subscriptions(resources: Resources) -> list[Subscription]:
    async with resources.sessions() as session:
        return list(await session.scalars(select(Subscription).order_by(Subscription.id)))


async def subscriber(resources: Resources, email: str = ADA) -> Subscriber:
    async with resources.sessions() as session:
        found = await session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert found is not None
        return found


async def count(resources: Resources, model: Any) -> int:
    async with resources.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def queued(resources: Resources) -> int:
    return int(await resources.redis.zcard(resources.settings.queue_name))


async def test_signup_mail_then_get_changes_nothing_then_post_confirms(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    resp = await signup(
        client, study="nct05879978", source="https://trials.example.org/studies/x", ip="203.0.113.9"
    )
    assert resp.status == 202
    assert await resp.json() == {"status": "pending"}
    [pending] = await subscriptions(resources)
    assert (pending.status, pending.kind, pending.match_key, pending.label) == (
        "pending",
        "study",
        f"study:{STUDY}",
        STUDY,
    )
    assert not pending.discreet
    assert pending.request_ip == "203.0.113.9"
    assert pending.request_user_agent == "TestBrowser/1.0"
    assert pending.request_source == "https://trials.example.org/studies/x"

    await run_worker(resources)
    assert len(smtp.messages) == 1
    message = smtp.messages[0].message
    assert message["To"] == ADA
    assert "List-Unsubscribe" not in message
    assert message["Auto-Submitted"] == "auto-generated"
    text, html = parts(message)
    for body in (text, html):
        assert STUDY in body
        assert resources.settings.site_name in body
        assert "ignore" in body.lower()
        assert "72 hours" in body
        # Nothing the requester typed besides the study: not the source, not the user agent.
        assert "studies/x" not in body
        assert "TestBrowser" not in body
    path = confirm_path(smtp)
    assert f'href="{PUBLIC_URL}{path}"' in html

    before = await snapshot(resources)
    page = await client.get(path, headers={"Accept": "text/html"})
    assert page.status == 200
    body = await page.text()
    assert '<form method="post"' in body
    assert "<script" not in body.lower()
    assert STUDY in body
    assert page.headers["Cache-Control"] == "no-store"
    assert await snapshot(resources) == before  # a link scanner's GET changes nothing

    ids = re.findall(r'name="subscription" value="(\d+)"', body)
    assert ids == [str(pending.id)]
    done = await client.post(
        path,
        data=urlencode({"subscription": ids[0]}),
        headers={
            "Content-Type": FORM,
            "User-Agent": "Clicker/2",
            "X-Forwarded-For": "198.51.100.7",
        },
    )
    assert done.status == 200
    assert "subscribed" in (await done.text()).lower()
    [confirmed] = await subscriptions(resources)
    assert confirmed.status == "confirmed"
    assert confirmed.confirmed_at is not None
    assert (confirmed.confirm_ip, confirmed.confirm_user_agent) == ("198.51.100.7", "Clicker/2")
    assert (await subscriber(resources)).first_confirmed_at == confirmed.confirmed_at
    # The evidence of the request survives the confirmation.
    assert confirmed.request_ip == "203.0.113.9"

    # A reused link says they are subscribed: never "sign up again" to someone who is.
    for method in (client.get, client.post):
        again = await method(path, headers={"Accept": "text/html"})
        assert again.status == 200
        reused = await again.text()
        assert "You're already subscribed" in reused
        assert "sign up again" not in reused.lower()
        assert STUDY in reused
        assert SITE_ORIGIN in reused  # back to the site
    assert (await client.post(path, headers={"Accept": "application/json"})).status == 410


async def test_condition_signup_is_normalised_and_discreet(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    resp = await signup(
        client,
        study=None,
        condition="  Non-Small-Cell   Lung Carcinoma ",
        mesh_id="D002289",
        broad=True,
        frequency="weekly",
        timezone="Europe/Paris",
    )
    assert resp.status == 202
    [row] = await subscriptions(resources)
    assert row.kind == "condition"
    assert row.match_key == "cond:non small cell lung carcinoma"
    assert row.label == "Non-Small-Cell Lung Carcinoma"
    assert (row.mesh_id, row.broad, row.frequency, row.discreet) == (
        "D000002289",
        True,
        "weekly",
        True,
    )
    assert (await subscriber(resources)).timezone == "Europe/Paris"
    await run_worker(resources)
    text, _ = parts(smtp.to(ADA)[0].message)
    assert "Non-Small-Cell Lung Carcinoma" in text
    assert "weekly" in text
    assert "Non-Small-Cell Lung Carcinoma" not in smtp.to(ADA)[0].message["Subject"]


async def test_form_post_redirects_to_allowed_origin_or_check_inbox(
    client: Client, resources: Resources
) -> None:
    resp = await signup(client, form=True, source="")
    assert resp.status == 303
    assert resp.headers["Location"] == f"{PUBLIC_URL}/v1/subscriptions/check-inbox"
    resp = await signup(client, form=True, redirect=f"{SITE_ORIGIN}/thanks?x=1")
    assert resp.status == 303
    assert resp.headers["Location"] == f"{SITE_ORIGIN}/thanks?x=1"
    page = await client.get("/v1/subscriptions/check-inbox")
    assert page.status == 200
    assert "Check your inbox" in await page.text()

    # Without `source`, a form post's Referer is the evidence of where it was made.
    resp = await client.post(
        "/v1/subscriptions",
        data=urlencode({"email": "bo@example.org", "condition": "asthma"}),
        headers={"Content-Type": FORM, "Referer": f"{SITE_ORIGIN}/asthma"},
        allow_redirects=False,
    )
    assert resp.status == 303
    rows = {row.label: row for row in await subscriptions(resources)}
    assert rows["asthma"].request_source == f"{SITE_ORIGIN}/asthma"

    before = await snapshot(resources)
    for target in (
        "https://evil.example/thanks",
        f"{SITE_ORIGIN}.evil.example/",
        f"https://user@{SITE_ORIGIN.removeprefix('https://')}/",
        "//evil.example/",
        "/relative",
        "javascript:alert(1)",
        f"{SITE_ORIGIN}\\@evil.example",
    ):
        resp = await signup(client, form=True, email="cy@example.org", redirect=target)
        assert resp.status == 422, target
        assert "redirect" in await resp.text()
    assert await snapshot(resources) == before


async def test_study_then_condition_a_minute_later_one_mail_confirms_both(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    with time_machine.travel(utcnow(), tick=True) as clock:
        assert (await signup(client)).status == 202
        await run_worker(resources)
        assert len(smtp.to(ADA)) == 1
        clock.shift(timedelta(minutes=1))
        resp = await signup(client, study=None, condition="Melanoma", mesh_id="D008545")
        assert resp.status == 202
        await run_worker(resources)
        assert len(smtp.to(ADA)) == 1  # the per-address limit holds: no second mail

        path = confirm_path(smtp)
        page = await (await client.get(path)).text()
        assert STUDY in page
        assert "Melanoma" in page  # the one link lists both
        ids = re.findall(r'name="subscription" value="(\d+)"', page)
        assert len(ids) == 2
        resp = await client.post(
            path,
            data=urlencode([("subscription", i) for i in ids]),
            headers={"Content-Type": FORM, "Accept": "application/json"},
        )
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "confirmed"
        assert sorted(s["label"] for s in body["subscriptions"]) == ["Melanoma", STUDY]
        assert {row.status for row in await subscriptions(resources)} == {"confirmed"}


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
async def test_study_and_its_condition_in_one_post_one_mail_one_confirm_two_subscriptions(
    client: Client, resources: Resources, smtp: RecordingSMTP, form: bool
) -> None:
    """The study page's box: "this study, and new studies for its condition"."""
    resp = await signup(client, form=form, condition="Neuroendocrine Tumors", frequency="daily")
    assert resp.status == (303 if form else 202)
    await run_worker(resources)
    [mail] = smtp.to(ADA)
    text, _ = parts(mail.message)
    assert STUDY in text
    assert "Neuroendocrine Tumors" in text

    path = confirm_path(smtp)
    resp = await client.post(path, headers={"Accept": "application/json"})
    assert resp.status == 200
    rows = await subscriptions(resources)
    assert [(r.kind, r.label, r.status, r.frequency, r.discreet) for r in rows] == [
        ("study", STUDY, "confirmed", "daily", False),
        ("condition", "Neuroendocrine Tumors", "confirmed", "daily", True),
    ]
    assert rows[1].match_key == "cond:neuroendocrine tumors"
    # Each has its own unsubscribe: ending one leaves the other.
    token = resources.tokens.unsubscribe(rows[0].id)
    assert (await client.post(f"/v1/unsubscribe/{token}")).status == 200
    assert [r.status for r in await subscriptions(resources)] == ["unsubscribed", "confirmed"]


async def test_study_and_condition_when_the_study_is_already_confirmed_mails_for_the_condition(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    assert (await signup(client)).status == 202
    await run_worker(resources)
    await client.post(confirm_path(smtp), headers={"Accept": "application/json"})
    with time_machine.travel(utcnow() + timedelta(minutes=11), tick=True):
        assert (await signup(client, condition="Neuroendocrine Tumors")).status == 202
        await run_worker(resources)
    assert len(smtp.to(ADA)) == 2
    text, _ = parts(smtp.to(ADA)[-1].message)
    assert "Neuroendocrine Tumors" in text
    assert [r.status for r in await subscriptions(resources)] == ["confirmed", "pending"]


async def test_a_hundred_signups_for_one_address_send_at_most_one_mail(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    async def one(i: int) -> int:
        fields: dict[str, Any] = (
            {"study": f"NCT{i:08d}"} if i % 2 else {"study": None, "condition": f"Condition {i}"}
        )
        # Each from its own IP, so only the per-address limit stands in the way.
        return (await signup(client, ip=f"198.51.100.{i}", **fields)).status

    statuses = await asyncio.gather(*(one(i) for i in range(100)))
    assert set(statuses) == {202}
    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1
    # And the address cannot be used to pile up rows either.
    assert await count(resources, Subscription) <= 25


async def test_the_21st_request_in_a_minute_from_one_ip_gets_429(
    client: Client, resources: Resources
) -> None:
    with time_machine.travel(utcnow(), tick=True) as clock:
        for i in range(20):
            resp = await signup(client, ip="192.0.2.1", email=f"p{i}@example.org")
            assert resp.status == 202
        resp = await signup(client, ip="192.0.2.1", email="p21@example.org")
        assert resp.status == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert (await resp.json())["error"]
        assert await count(resources, Subscriber) == 20
        # A form post gets the same refusal as a page; another IP is not affected.
        resp = await signup(client, ip="192.0.2.1", form=True, email="p22@example.org")
        assert resp.status == 429
        assert "text/html" in resp.headers["Content-Type"]
        assert (await signup(client, ip="192.0.2.2", email="q@example.org")).status == 202
        clock.shift(timedelta(seconds=61))
        assert (await signup(client, ip="192.0.2.1", email="p23@example.org")).status == 202


async def _state(resources: Resources, email: str, status: str | None) -> None:
    """Put `email` in a given state: None = unknown, or a subscription with this status."""
    if status is None:
        return
    async with resources.sessions.begin() as session:
        person = Subscriber(email=email, email_hash=resources.email_hash(email), timezone="UTC")
        session.add(person)
        await session.flush()
        session.add(
            Subscription(
                subscriber_id=person.id,
                kind="study",
                match_key=f"study:{STUDY}",
                label=STUDY,
                status="unsubscribed" if status == "suppressed" else status,
                confirmed_at=utcnow() if status == "confirmed" else None,
            )
        )
        if status == "confirmed":
            person.first_confirmed_at = utcnow()
        if status == "suppressed":
            await suppress(session, resources.email_hash(email), "complaint")


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
async def test_answers_are_byte_identical_whatever_the_address(
    client: Client, resources: Resources, smtp: RecordingSMTP, form: bool
) -> None:
    states = ["new", "pending", "confirmed", "unsubscribed", "suppressed"]
    for name in states:
        await _state(resources, f"{name}@example.org", None if name == "new" else name)
    await _state(resources, "limited@example.org", None)
    assert (await signup(client, email="limited@example.org", ip="192.0.2.50")).status == 202

    answers = {}
    for i, name in enumerate([*states, "limited"]):
        resp = await signup(client, form=form, email=f"{name}@example.org", ip=f"192.0.2.{i}")
        answers[name] = (
            resp.status,
            await resp.read(),
            resp.headers.get("Location"),
            resp.headers.get("Content-Type"),
        )
    resp = await signup(client, form=form, email="bot@example.org", website="http://spam")
    answers["honeypot"] = (
        resp.status,
        await resp.read(),
        resp.headers.get("Location"),
        resp.headers.get("Content-Type"),
    )
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values()))[0] == (303 if form else 202)

    await run_worker(resources)
    mailed = sorted({m.rcpt_to for m in smtp.messages})
    # New, pending and unsubscribed (now pending again) get a mail; the limited address got
    # its one mail before; confirmed, suppressed and the honeypot get none.
    assert mailed == sorted(
        f"{n}@example.org" for n in ("new", "pending", "unsubscribed", "limited")
    )
    assert len(smtp.to("limited@example.org")) == 1
    status = {}
    for row in await subscriptions(resources):
        async with resources.sessions() as session:
            owner = await session.get(Subscriber, row.subscriber_id)
        assert owner is not None
        status[owner.email.split("@")[0]] = row.status
    assert status["confirmed"] == "confirmed"  # never downgraded
    assert status["unsubscribed"] == "pending"  # a fresh request, to be confirmed again
    assert status["suppressed"] == "unsubscribed"  # untouched
    assert "bot" not in status


async def test_resubscribing_after_unsubscribe_records_fresh_evidence(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    await _state(resources, ADA, "confirmed")
    async with resources.sessions.begin() as session:
        await session.execute(
            update(Subscription).values(
                status="unsubscribed", unsubscribed_at=utcnow(), unsubscribe_reason="link"
            )
        )
    assert (await signup(client, ip="192.0.2.77")).status == 202
    [row] = await subscriptions(resources)
    assert (row.status, row.request_ip, row.confirmed_at, row.unsubscribed_at) == (
        "pending",
        "192.0.2.77",
        None,
        None,
    )
    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1


def _bad_inputs() -> list[Any]:
    cases: list[Any] = [
        pytest.param({"email": "not-an-address"}, 422, "email", id="invalid-email"),
        pytest.param({"email": ""}, 422, "email", id="empty-email"),
        pytest.param({"study": "NCT123"}, 422, "study", id="NCT123"),
        pytest.param(
            {"study": None, "condition": "x" * 10_240}, 422, "condition", id="10KB-condition"
        ),
        pytest.param({"study": None, "condition": "a"}, 422, "condition", id="short-condition"),
        pytest.param({"study": None, "condition": "!!!"}, 422, "condition", id="no-words"),
        pytest.param(
            {"study": None, "condition": "cure at http://spam.example"},
            422,
            "condition",
            id="link-in-condition",
        ),
        pytest.param({"study": None}, 422, "condition", id="neither"),
        pytest.param({"mesh_id": "D008545"}, 422, "mesh_id", id="mesh-with-study"),
        pytest.param(
            {"study": None, "condition": "asthma", "mesh_id": "X12"}, 422, "mesh_id", id="bad-mesh"
        ),
        pytest.param(
            {"study": None, "condition": "asthma", "broad": True}, 422, "broad", id="broad-no-mesh"
        ),
        pytest.param({"frequency": "hourly"}, 422, "frequency", id="frequency"),
        pytest.param({"timezone": "Mars/Olympus"}, 422, "timezone", id="timezone"),
        pytest.param({"timezone": "../../etc/passwd"}, 422, "timezone", id="timezone-path"),
        pytest.param({"source": "https://x.example/" + "a" * 600}, 422, "source", id="long-src"),
        pytest.param({"email": 42}, 422, "email", id="email-not-string"),
    ]
    fields = {
        "email": ADA,
        "study": STUDY,
        "condition": "asthma",
        "mesh_id": "D001249",
        "frequency": "daily",
        "timezone": "Europe/Paris",
        "redirect": f"{SITE_ORIGIN}/thanks",
        "source": f"{SITE_ORIGIN}/page",
        "website": "",
    }
    for name, value in fields.items():
        for breaker in ("\r\n", "\n", "\r", "\x00", "\u2028"):
            body: dict[str, Any] = {name: value + breaker + "Bcc: victim@example.org"}
            if name in ("condition", "mesh_id"):
                body["study"] = None
                body.setdefault("condition", "asthma")
            cases.append(pytest.param(body, 422, name, id=f"control-{name}-{breaker.encode()!r}"))
    return cases


@pytest.mark.parametrize(("fields", "status", "field"), _bad_inputs())
@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
async def test_bad_input_is_refused_with_field_errors_and_writes_nothing(
    client: Client,
    resources: Resources,
    fields: dict[str, Any],
    status: int,
    field: str,
    form: bool,
) -> None:
    resp = await signup(client, form=form, **fields)
    assert resp.status == status
    if form:
        assert "text/html" in resp.headers["Content-Type"]
        assert field in await resp.text()
    else:
        body = await resp.json()
        assert body["error"] == "invalid input"
        assert field in body["fields"], body
        assert body["fields"][field]
    assert await count(resources, Subscriber) == 0
    assert await count(resources, Subscription) == 0
    assert await queued(resources) == 0


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        pytest.param("text/plain", b"email=a@example.org", 415, "application/json", id="text"),
        pytest.param(None, b'{"email": "a@example.org"}', 415, "application/json", id="no-type"),
        pytest.param(
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="email"\r\n\r\na@example.org\r\n--x--',
            415,
            "application/json",
            id="multipart",
        ),
        pytest.param("application/json", b'{"email": ', 400, "not valid JSON", id="bad-json"),
        pytest.param("application/json", b'["a@example.org"]', 400, "JSON object", id="array"),
        pytest.param("application/json", b'{"email": "\xff"}', 400, "not valid JSON", id="utf8"),
        pytest.param(FORM, b"email=%FF&study=NCT05879978", 400, "UTF-8", id="form-utf8"),
        pytest.param(FORM, b"email=a@x.org&email=b@x.org", 400, "more than once", id="repeat"),
        pytest.param(
            "application/json",
            json.dumps({"email": ADA, "study": None, "condition": "x" * 1_048_576}).encode(),
            413,
            "too large",
            id="1MB",
        ),
    ],
)
async def test_unreadable_bodies_get_a_4xx_with_a_message_and_write_nothing(
    client: Client,
    resources: Resources,
    content_type: str | None,
    body: bytes,
    status: int,
    message: str,
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await client.post(
        "/v1/subscriptions",
        data=io.BytesIO(body),  # a stream: aiohttp warns about large raw bytes
        headers=headers,
        skip_auto_headers=["Content-Type"],
    )
    assert resp.status == status
    assert message in (await resp.json())["error"]
    assert await count(resources, Subscriber) == 0
    assert await queued(resources) == 0


async def test_cors_preflight_is_allowed_for_the_configured_origin_only(client: Client) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type",
    }
    ok = await client.options("/v1/subscriptions", headers={"Origin": SITE_ORIGIN, **preflight})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == SITE_ORIGIN
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in ok.headers

    evil = await client.options(
        "/v1/subscriptions", headers={"Origin": "https://evil.example", **preflight}
    )
    assert evil.status == 403
    assert "Access-Control-Allow-Origin" not in evil.headers

    resp = await client.post(
        "/v1/subscriptions",
        json={"email": ADA, "study": STUDY},
        headers={"Origin": SITE_ORIGIN},
    )
    assert resp.status == 202
    assert resp.headers["Access-Control-Allow-Origin"] == SITE_ORIGIN
    resp = await client.post(
        "/v1/subscriptions",
        json={"email": ADA, "study": STUDY},
        headers={"Origin": "https://evil.example"},
    )
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_openapi_documents_the_signup_and_confirm_endpoints(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).json()
    post = spec["paths"]["/v1/subscriptions"]["post"]
    assert set(post["responses"]) >= {"202", "303", "413", "415", "422", "429"}
    schema = spec["components"]["schemas"]["SignupRequest"]
    assert {"email", "study", "condition", "mesh_id", "broad", "redirect", "website"} <= set(
        schema["properties"]
    )
    assert set(spec["paths"]["/v1/confirm/{token}"]) == {"get", "post"}
