"""Property tests: nothing a client sends can add a header or an SMTP command to a mail, and every
4xx answer is a JSON or HTML error with a message.

Hostile values mix CR, LF, NUL, Unicode line separators (U+2028, U+2029, U+0085), other
controls, encoded-word tricks, SMTP commands and very long strings; they go into every field of
signup, the manage-link request and (signed) events, and into the headers kept as evidence.
Whatever is accepted is mailed through the real worker and the real SMTP server, and each
received message is parsed as sent.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.pipeline import encode
from notifier.resources import Resources
from tests.conftest import run_worker
from tests.events_factory import new_study, signed_headers, subscribe
from tests.smtp_server import Received, RecordingSMTP

PIECES = [
    "\r\n",
    "\n",
    "\r",
    "\x00",
    "\u2028",
    "\u2029",
    "\x85",
    "\t",
    "\x0b",
    "\x1b[31m",
    "\r\nBcc: victim@attacker.example",
    "\nX-Injected: yes",
    "\r\n\r\n<script>alert(1)</script>",
    "\r\n.\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@attacker.example>\r\nDATA\r\n",
    "%0d%0aBcc:%20victim@attacker.example",
    "=?utf-8?q?=0D=0ABcc:_victim@attacker.example?=",
    "Small cell lung cancer",
]
hostile = st.one_of(
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=6).map("".join),
    st.integers(min_value=1000, max_value=20_000).map(lambda n: "Q" * n),  # very long values
    st.text(max_size=50),
)
HEADER_NAMES = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}
SEPARATORS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
addresses = (f"h{i}@example.org" for i in itertools.count())
MAILED: list[str] = []  # addresses whose mail was checked: proof the properties were exercised


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Every example must reach the mail, not a rate limit.
    return {
        "ip_requests_per_minute": 1_000_000,
        "signup_address_daily": 1_000_000,
        "confirmed_address_daily": 1_000_000,
    }


def assert_clean(received: Received, rcpt: str, sender: str = "alerts@notify.example.org") -> None:
    """The message has exactly our headers, each once, on lines of their own, and one recipient."""
    assert received.rcpt_to == rcpt
    assert received.mail_from == sender
    raw = received.data
    assert b"\x00" not in raw
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, "no end of headers"
    lines = head.split(b"\r\n")
    names = []
    for line in lines:
        assert b"\r" not in line, line[:80]
        assert b"\n" not in line, line[:80]
        assert len(line) <= 998
        if line[:1] not in (b" ", b"\t"):  # a header starts; folded lines continue one
            name, colon, _ = line.partition(b":")
            assert colon, line[:80]
            names.append(name.decode("ascii").lower())
    assert len(names) == len(set(names)), names
    assert set(names) <= HEADER_NAMES, set(names) - HEADER_NAMES
    msg = received.message
    for header in names:
        value = str(msg[header])
        assert not SEPARATORS.search(value), (header, value[:80])
    assert msg["To"] == rcpt
    assert msg.get_all("To") == [rcpt]


def assert_mailed_once_and_clean(smtp: RecordingSMTP, rcpt: str) -> None:
    assert smtp.transactions == len(smtp.messages)  # no smuggled transaction
    assert [m.rcpt_to for m in smtp.messages].count(rcpt) == 1
    for received in smtp.messages:
        assert_clean(received, received.rcpt_to)
    MAILED.append(rcpt)


# Conditions a person might type (accepted) or hostile ones (refused unless harmless).
conditions = st.one_of(
    hostile,
    st.sampled_from(["Asthma", "Small cell lung cancer", "Crohn\u2019s disease (CD)", "Ménière"]),
)


@FAST
@given(
    condition=conditions,
    user_agent=hostile,
    referer=hostile,
    extra=st.dictionaries(
        st.sampled_from(["source", "timezone", "mesh_id", "website"]), hostile, max_size=1
    ),
    as_form=st.booleans(),
)
async def test_signup_input_never_reaches_mail_headers(
    client: TestClient[Any, Any],
    resources: Resources,
    smtp: RecordingSMTP,
    condition: str,
    user_agent: str,
    referer: str,
    extra: dict[str, str],
    as_form: bool,
) -> None:
    smtp.messages.clear()
    smtp.transactions = 0
    email = next(addresses)
    body = {"email": email, "condition": condition, **extra}
    headers = {"User-Agent": _header(user_agent), "Referer": _header(referer)}
    if as_form:
        resp = await client.post(
            "/v1/subscriptions", data=body, headers=headers, allow_redirects=False
        )
    else:
        resp = await client.post("/v1/subscriptions", json=body, headers=headers)
    assert resp.status in (202, 303, 400, 422), resp.status
    await run_worker(resources)
    if resp.status in (400, 422):
        assert smtp.messages == []
        return
    if smtp.messages:  # the honeypot (website) keeps quiet
        assert_mailed_once_and_clean(smtp, email)


@FAST
@given(email=hostile, domain_tail=hostile)
async def test_an_address_cannot_carry_headers_or_commands(
    client: TestClient[Any, Any],
    resources: Resources,
    smtp: RecordingSMTP,
    email: str,
    domain_tail: str,
) -> None:
    smtp.messages.clear()
    smtp.transactions = 0
    for path, body in [
        (
            "/v1/subscriptions",
            {"email": f"{email}@example.org{domain_tail}", "study": "NCT05879978"},
        ),
        ("/v1/manage", {"email": f"ok@example.org{email}"}),
        ("/v1/subscriptions", {"email": f"a{email}b@example.org", "study": "NCT05879978"}),
    ]:
        resp = await client.post(path, json=body)
        assert resp.status in (202, 422), resp.status
    await run_worker(resources)
    assert smtp.transactions == len(smtp.messages)
    for received in smtp.messages:
        # Only the address itself, as validated: never a second recipient.
        assert "attacker" not in received.rcpt_to
        assert_clean(received, received.rcpt_to)


@FAST
@given(title=hostile, condition=hostile, why_stopped=hostile)
async def test_event_text_never_reaches_mail_headers(
    client: TestClient[Any, Any],
    resources: Resources,
    smtp: RecordingSMTP,
    title: str,
    condition: str,
    why_stopped: str,
) -> None:
    smtp.messages.clear()
    smtp.transactions = 0
    email = next(addresses)
    await subscribe(resources, email, study="NCT05879978")
    event = new_study("NCT05879978", event_id=f"hostile-{email}")
    event["study"]["brief_title"] = title
    event["study"]["conditions"] = [condition]
    event["study"]["why_stopped"] = why_stopped
    body = encode([event])
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
    assert resp.status in (202, 422), resp.status
    await run_worker(resources)
    if resp.status == 202:
        assert_mailed_once_and_clean(smtp, email)
    else:
        assert smtp.messages == []


def _header(value: str) -> str:
    """What an HTTP client can put in a header at all: no ASCII controls (aiohttp refuses
    them); Unicode separators such as U+2028 do go through."""
    return re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", value)[:4000]


# --- every 4xx explains itself ----------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/subscriptions"),
    ("POST", "/v1/manage"),
    ("GET", "/v1/confirm/{}"),
    ("POST", "/v1/confirm/{}"),
    ("GET", "/v1/unsubscribe/{}"),
    ("POST", "/v1/unsubscribe/{}"),
    ("GET", "/v1/manage/{}"),
    ("POST", "/v1/manage/{}"),
    ("POST", "/v1/events"),
    ("POST", "/v1/bounces"),
    ("GET", "/v1/admin/suppressions"),
    ("POST", "/v1/admin/suppressions"),
    ("DELETE", "/v1/admin/subscribers"),
    ("GET", "/v1/admin/events/{}"),
    ("PUT", "/v1/subscriptions"),
    ("OPTIONS", "/v1/subscriptions"),
    ("GET", "/{}"),
]
bodies = st.one_of(
    hostile.map(str.encode),
    st.binary(max_size=200),
    st.dictionaries(st.text(max_size=10), st.one_of(hostile, st.integers(), st.none())).map(
        lambda d: json.dumps(d).encode()
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(ROUTES),
    segment=hostile,
    query=hostile,
    body=bodies,
    content_type=st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
            "application/xml",
            "",
        ]
    ),
    accept=st.sampled_from(["application/json", "text/html", "*/*", ""]),
    origin=st.sampled_from([None, "https://evil.example", "https://trials.example.org"]),
    authorization=st.sampled_from([None, "Bearer nope", "Basic x"]),
)
async def test_every_4xx_has_an_error_body_with_a_message(
    client: TestClient[Any, Any],
    route: tuple[str, str],
    segment: str,
    query: str,
    body: bytes,
    content_type: str,
    accept: str,
    origin: str | None,
    authorization: str | None,
) -> None:
    method, template = route
    path = template.format(quote(segment, safe="")[:1000] or "x")
    headers = {"Accept": accept, "Content-Type": content_type}
    if origin:
        headers.update({"Origin": origin, "Access-Control-Request-Method": "POST"})
    if authorization:
        headers["Authorization"] = authorization
    resp = await client.request(
        method,
        path,
        params={"email": _header(query)},
        data=body,
        headers=headers,
        allow_redirects=False,
    )
    text = await resp.text(errors="replace")
    assert resp.status < 500, (method, path, resp.status, text[:200])
    if resp.status < 400:
        return
    kind = resp.content_type
    if kind == "application/json":
        payload = json.loads(text)
        assert isinstance(payload, dict)
        assert isinstance(payload.get("error"), str), payload
        assert payload["error"].strip(), payload
    else:
        assert kind == "text/html", (method, path, resp.status, kind, text[:200])
        heading = re.search(r"<h1[^>]*>(.*?)</h1>", text, re.S)
        assert heading is not None, text[:300]
        assert heading.group(1).strip(), text[:300]


def test_the_properties_above_checked_real_mail() -> None:
    """Runs after them (file order): most examples must have produced a mail to inspect."""
    if not MAILED:
        pytest.skip("run with the property tests above")
    assert len(MAILED) >= 15, MAILED
