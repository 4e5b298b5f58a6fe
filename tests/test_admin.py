"""Operator endpoints: suppression list, bounce intake with the soft-bounce rule, authentication."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from notifier.clock import utcnow
from notifier.data.models import Bounce, Subscription, Suppression
from notifier.resources import Resources
from tests.conftest import ADMIN_TOKEN
from tests.factories import make_subscription

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADA = "ada@example.org"

ENDPOINTS = [
    ("GET", "/v1/admin/suppressions"),
    ("POST", "/v1/admin/suppressions"),
    ("DELETE", "/v1/admin/suppressions?email=ada@example.org"),
    ("GET", "/v1/admin/subscribers?email=ada@example.org"),
    ("DELETE", "/v1/admin/subscribers?email=ada@example.org"),
    ("POST", "/v1/bounces"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}],
    ids=["none", "wrong", "basic"],
)
async def test_admin_endpoints_need_the_token(
    client: TestClient[Any, Any],
    resources: Resources,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email=ADA)
    body = {"email": ADA, "kind": "hard"} if method == "POST" else None
    resp = await client.request(method, path, json=body, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with resources.sessions.begin() as session:
        assert await session.scalar(select(func.count(Suppression.id))) == 0
        assert await session.scalar(select(Subscription.status)) == "confirmed"


async def _statuses(resources: Resources) -> dict[str, str]:
    async with resources.sessions.begin() as session:
        rows = await session.scalars(select(Subscription))
        return {s.label: s.status for s in rows}


async def test_suppress_list_and_lift(client: TestClient[Any, Any], resources: Resources) -> None:
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email=ADA)
        await make_subscription(session, resources, email="bob@example.org", label="NCT03801200")

    resp = await client.post(
        "/v1/admin/suppressions",
        json={"email": "Ada@Example.org", "reason": "legal_request", "detail": "ticket 42"},
        headers=AUTH,
    )
    assert resp.status == 201
    entry = await resp.json()
    assert entry["email_hash"] == resources.email_hash(ADA)
    assert (entry["reason"], entry["detail"]) == ("legal_request", "ticket 42")
    assert ADA not in str(entry)  # the list holds keyed hashes, never addresses
    assert await _statuses(resources) == {"NCT05879978": "unsubscribed", "NCT03801200": "confirmed"}

    again = await client.post("/v1/admin/suppressions", json={"email": ADA}, headers=AUTH)
    assert again.status == 200
    assert (await again.json())["id"] == entry["id"]

    listed = await (await client.get(f"/v1/admin/suppressions?email={ADA}", headers=AUTH)).json()
    assert [s["id"] for s in listed["suppressions"]] == [entry["id"]]
    none = await client.get("/v1/admin/suppressions?email=bob@example.org", headers=AUTH)
    assert (await none.json())["suppressions"] == []

    resp = await client.delete(f"/v1/admin/suppressions?email={ADA}", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"removed": True}
    # Lifting the suppression does not resubscribe anything: only a new signup does.
    assert await _statuses(resources) == {"NCT05879978": "unsubscribed", "NCT03801200": "confirmed"}
    resp = await client.delete(f"/v1/admin/suppressions?email={ADA}", headers=AUTH)
    assert resp.status == 404


async def test_list_is_paginated_by_id(client: TestClient[Any, Any], resources: Resources) -> None:
    for i in range(5):
        resp = await client.post(
            "/v1/admin/suppressions", json={"email": f"p{i}@example.org"}, headers=AUTH
        )
        assert resp.status == 201
    seen: list[int] = []
    after = 0
    pages = 0
    while True:
        resp = await client.get(f"/v1/admin/suppressions?limit=2&after={after}", headers=AUTH)
        page = await resp.json()
        seen += [s["id"] for s in page["suppressions"]]
        pages += 1
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert len(seen) == 5
    assert seen == sorted(set(seen))
    assert pages == 3


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/admin/suppressions", {"email": "not-an-address"}),
        ("POST", "/v1/admin/suppressions", {"email": ADA, "reason": "Bad Reason!"}),
        ("POST", "/v1/admin/suppressions", {"email": ADA, "surprise": 1}),
        ("POST", "/v1/admin/suppressions", None),
        ("GET", "/v1/admin/suppressions?limit=0", None),
        ("GET", "/v1/admin/suppressions?after=-1", None),
        ("GET", "/v1/admin/suppressions?email=a%0Ab@example.org", None),
        ("DELETE", "/v1/admin/suppressions", None),
        ("GET", "/v1/admin/subscribers", None),
        ("DELETE", "/v1/admin/subscribers?email=nobody", None),
        ("POST", "/v1/bounces", {"email": ADA, "kind": "angry"}),
        ("POST", "/v1/bounces", {"bounces": []}),
        ("POST", "/v1/bounces", {"bounces": [{"email": ADA, "kind": "hard"}, {"email": ADA}]}),
        ("POST", "/v1/bounces", {"bounces": [{"email": ADA, "kind": "soft"}] * 501}),
        ("POST", "/v1/bounces", [1, 2]),
    ],
)
async def test_bad_input_is_422_and_writes_nothing(
    client: TestClient[Any, Any],
    resources: Resources,
    method: str,
    path: str,
    body: Any,
) -> None:
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email=ADA)
    resp = await client.request(method, path, json=body, headers=AUTH)
    assert resp.status == 422
    assert (await resp.json())["fields"]
    async with resources.sessions.begin() as session:
        assert await session.scalar(select(func.count(Suppression.id))) == 0
        assert await session.scalar(select(func.count(Bounce.id))) == 0
    assert await _statuses(resources) == {"NCT05879978": "confirmed"}


async def _suppression(resources: Resources, email: str) -> Suppression | None:
    async with resources.sessions.begin() as session:
        return await session.scalar(
            select(Suppression).where(Suppression.email_hash == resources.email_hash(email))
        )


@pytest.mark.parametrize(("kind", "reason"), [("hard", "hard_bounce"), ("complaint", "complaint")])
async def test_hard_bounce_and_complaint_suppress_at_once(
    client: TestClient[Any, Any], resources: Resources, kind: str, reason: str
) -> None:
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email=ADA)
    resp = await client.post(
        "/v1/bounces", json={"email": ADA, "kind": kind, "detail": "550 5.1.1"}, headers=AUTH
    )
    assert resp.status == 200
    assert await resp.json() == {"accepted": 1, "suppressed": 1}
    entry = await _suppression(resources, ADA)
    assert entry is not None
    assert (entry.reason, entry.detail) == (reason, "550 5.1.1")
    assert await _statuses(resources) == {"NCT05879978": "unsubscribed"}
    resp = await client.post("/v1/bounces", json={"email": ADA, "kind": kind}, headers=AUTH)
    assert await resp.json() == {"accepted": 1, "suppressed": 0}  # already suppressed


async def test_soft_bounces_suppress_after_the_limit_within_the_window(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    limit = resources.settings.soft_bounce_limit
    window = resources.settings.soft_bounce_window_days
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email=ADA)
    soft = {"email": ADA, "kind": "soft", "detail": "452 4.2.2 mailbox full"}

    # Soft bounces from before the window do not count, though with them there would be enough.
    with time_machine.travel(utcnow() - timedelta(days=window, minutes=1)):
        old = {"bounces": [soft] * (limit - 1)}
        resp = await client.post("/v1/bounces", json=old, headers=AUTH)
        assert await resp.json() == {"accepted": limit - 1, "suppressed": 0}

    for n in range(1, limit):
        resp = await client.post("/v1/bounces", json=soft, headers=AUTH)
        assert await resp.json() == {"accepted": 1, "suppressed": 0}, n
    assert await _suppression(resources, ADA) is None
    assert await _statuses(resources) == {"NCT05879978": "confirmed"}

    resp = await client.post("/v1/bounces", json=soft, headers=AUTH)
    assert await resp.json() == {"accepted": 1, "suppressed": 1}
    entry = await _suppression(resources, ADA)
    assert entry is not None
    assert entry.reason == "soft_bounces"
    assert await _statuses(resources) == {"NCT05879978": "unsubscribed"}


async def test_bounce_batch_mixes_kinds_and_addresses(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    batch = {
        "bounces": [
            {"email": "hard@example.org", "kind": "hard"},
            {"email": "soft@example.org", "kind": "soft"},
            {"email": "angry@example.org", "kind": "complaint"},
        ]
    }
    resp = await client.post("/v1/bounces", json=batch, headers=AUTH)
    assert await resp.json() == {"accepted": 3, "suppressed": 2}
    assert await _suppression(resources, "soft@example.org") is None
    async with resources.sessions.begin() as session:
        kinds = sorted(await session.scalars(select(Bounce.kind)))
    assert kinds == ["complaint", "hard", "soft"]


async def test_openapi_documents_every_endpoint(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for method, path in [
        ("get", "/v1/unsubscribe/{token}"),
        ("post", "/v1/unsubscribe/{token}"),
        ("get", "/v1/manage/{token}"),
        ("post", "/v1/manage/{token}"),
        ("post", "/v1/manage"),
        *((m.lower(), p.split("?")[0]) for m, p in ENDPOINTS),
    ]:
        assert method in paths[path], (method, path)
    for name in ("SuppressionIn", "BounceIn", "SubscriberExport", "ManageAction"):
        assert name in spec["components"]["schemas"]
    assert paths["/v1/bounces"]["post"]["security"] == [{"admin": []}]
