"""Hostile testing, round two (issue 18, findings 1 and 7): bodies no route can decode, and text
no database can store, are 4xx answers with our error body, never a 500 or a 503; one-click
unsubscribe happens whatever the body."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.data.models import Subscription
from notifier.resources import Resources
from tests.conftest import ADMIN_TOKEN
from tests.events_factory import new_study, signed_headers
from tests.factories import make_subscription

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BOUNDARY = "b0undary"


def multipart(part_headers: str, value: bytes = b"ada@example.org") -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="email"\r\n{part_headers}\r\n'.encode()
        + value
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


# (Content-Type, body): the exact inputs of the report.
MALFORMED = [
    pytest.param(
        "application/x-www-form-urlencoded; charset=bogus", b"email=ada%40example.org", id="form"
    ),
    pytest.param("application/json; charset=bogus", b'{"email": "ada@example.org"}', id="json"),
    pytest.param(
        f"multipart/form-data; boundary={BOUNDARY}",
        multipart("Content-Transfer-Encoding: x-bogus\r\n"),
        id="multipart-cte",
    ),
    pytest.param(
        f"multipart/form-data; boundary={BOUNDARY}",
        multipart("Content-Type: text/plain; charset=xxx-bogus\r\n"),
        id="multipart-charset",
    ),
]


async def _subscription(resources: Resources) -> Subscription:
    async with resources.sessions.begin() as session:
        return await make_subscription(session, resources, email="ada@example.org")


@pytest.mark.parametrize(("content_type", "body"), MALFORMED)
@pytest.mark.parametrize("accept", ["application/json", "text/html"])
@pytest.mark.parametrize(
    "path", ["/v1/manage", "/v1/manage/{m}", "/v1/admin/suppressions", "/v1/bounces"]
)
async def test_undecodable_bodies_are_4xx_with_our_error_body(
    client: TestClient[Any, Any],
    resources: Resources,
    path: str,
    accept: str,
    content_type: str,
    body: bytes,
) -> None:
    sub = await _subscription(resources)
    url = path.format(m=resources.tokens.manage(sub.subscriber_id))
    headers = {"Content-Type": content_type, "Accept": accept, **ADMIN}
    resp = await client.post(url, data=body, headers=headers)
    text = await resp.text()
    assert resp.status in (400, 413, 415, 422), (resp.status, text[:200])
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Request-Id"]
    if resp.content_type == "application/json":
        assert json.loads(text)["error"]
    else:
        assert resp.content_type == "text/html"
        assert "<h1" in text


@pytest.mark.parametrize(("content_type", "body"), MALFORMED)
async def test_one_click_unsubscribe_happens_whatever_the_body(
    client: TestClient[Any, Any], resources: Resources, content_type: str, body: bytes
) -> None:
    sub = await _subscription(resources)
    path = f"/v1/unsubscribe/{resources.tokens.unsubscribe(sub.id)}"
    resp = await client.post(path, data=body, headers={"Content-Type": content_type})
    assert resp.status == 200, await resp.text()
    async with resources.sessions() as session:
        assert await session.scalar(select(Subscription.status)) == "unsubscribed"


async def test_one_click_unsubscribe_with_a_huge_body_still_unsubscribes(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    path = f"/v1/unsubscribe/{resources.tokens.unsubscribe(sub.id)}"
    body = b"List-Unsubscribe=One-Click&x=" + b"x" * (resources.settings.max_body_bytes * 2)
    resp = await client.post(
        path, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status == 200
    async with resources.sessions() as session:
        assert await session.scalar(select(Subscription.status)) == "unsubscribed"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"body_timeout": 1.0}


async def test_a_body_that_never_arrives_is_408_and_the_connection_closed(
    client: TestClient[Any, Any],
) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/manage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # read() returns at EOF: closed
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b'"error"' in answer


async def test_a_slow_one_click_unsubscribe_still_unsubscribes(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    sub = await _subscription(resources)
    path = f"/v1/unsubscribe/{resources.tokens.unsubscribe(sub.id)}"
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nL"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    async with resources.sessions() as session:
        assert await session.scalar(select(Subscription.status)) == "unsubscribed"


# --- finding 7: text the database cannot store is the client's mistake -------------------------

SURROGATE = "\ud800"


def _json_bytes(data: Any) -> bytes:
    # json.dumps writes a lone surrogate as the escape "\ud800", as a hostile client would.
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "fields",
    [
        {"condition": f"Asthma {SURROGATE}"},
        {"study": "NCT05879978", "source": f"https://trials.example.org/{SURROGATE}"},
    ],
    ids=["condition", "source"],
)
async def test_a_lone_surrogate_in_signup_text_is_422(
    client: TestClient[Any, Any], fields: dict[str, str]
) -> None:
    body = _json_bytes({"email": "ada@example.org", **fields})
    resp = await client.post(
        "/v1/subscriptions", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 422, await resp.text()
    assert set((await resp.json())["fields"]) <= {"condition", "source"}


@pytest.mark.parametrize("header", ["User-Agent", "Referer"])
async def test_a_0xff_byte_in_evidence_headers_is_not_an_outage(
    client: TestClient[Any, Any], resources: Resources, header: str
) -> None:
    body = b'{"email": "ada@example.org", "study": "NCT05879978"}'
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/subscriptions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
        + header.encode()
        + b": Mozilla \xff\xfe/5.0\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1])
    assert status in (202, 400, 422), answer[:300]
    if status == 202:  # stored, with the undecodable bytes replaced
        async with resources.sessions() as session:
            sub = (await session.scalars(select(Subscription))).one()
        stored = sub.request_user_agent if header == "User-Agent" else sub.request_source
        assert stored is not None
        assert "\ufffd" in stored


async def test_a_nul_in_an_admin_detail_is_422(client: TestClient[Any, Any]) -> None:
    for path, body in [
        ("/v1/admin/suppressions", {"email": "ada@example.org", "detail": "a\x00b"}),
        ("/v1/bounces", {"email": "ada@example.org", "kind": "hard", "detail": "a\x00b"}),
        ("/v1/admin/suppressions", {"email": "ada@example.org", "detail": SURROGATE}),
    ]:
        resp = await client.post(
            path, data=_json_bytes(body), headers={**ADMIN, "Content-Type": "application/json"}
        )
        assert resp.status == 422, (path, await resp.text())


async def test_a_nul_event_id_is_404(client: TestClient[Any, Any]) -> None:
    for event_id in ("%00", "a%00b", "%ED%A0%80"):
        resp = await client.get(f"/v1/admin/events/{event_id}", headers=ADMIN)
        assert resp.status == 404, (event_id, await resp.text())
        assert (await resp.json())["error"]


async def test_a_lone_surrogate_in_an_unknown_event_field_is_422(
    client: TestClient[Any, Any],
) -> None:
    event = new_study("NCT05879978", event_id="surrogate-1")
    event["x_note"] = f"kept {SURROGATE}"
    event["study"]["x_extra"] = {"deep": [SURROGATE]}
    for body in (_json_bytes(event), _json_bytes({"events": [event]})):
        resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
        assert resp.status == 422, await resp.text()
    nul = new_study("NCT05879978", event_id="nul-1")
    nul["x_note"] = "a\x00b"
    body = _json_bytes(nul)
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
    assert resp.status == 422, await resp.text()
