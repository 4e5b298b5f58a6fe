"""GDPR: export everything held about an address; erase it, keeping only a suppressed keyed hash."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import delete, insert, select

from notifier.clock import utcnow
from notifier.data.models import Base, Subscriber
from notifier.resources import Resources
from tests.conftest import ADMIN_TOKEN, run_worker
from tests.factories import make_delivery, make_event, make_subscription
from tests.smtp_server import RecordingSMTP

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADA = "ada.lovelace@example.org"
BOB = "bob@example.org"


async def _history(resources: Resources) -> dict[str, Any]:
    """ADA: a confirmed study, a pending condition, one sent and one failed delivery, a bounce.

    BOB: one subscription and a delivery of the same event, which erasing ADA must not touch.
    """
    async with resources.sessions.begin() as session:
        study = await make_subscription(session, resources, email=ADA)
        condition = await make_subscription(
            session,
            resources,
            email=ADA,
            kind="condition",
            label="Small cell lung cancer",
            status="pending",
            request_source="https://trials.example.org/conditions",
        )
        bob = await make_subscription(session, resources, email=BOB, label="NCT03801200")
        first = await make_event(session)
        second = await make_event(session, change_kind="status_changed")
        sent = await make_delivery(
            session, event=first, subscriber_id=study.subscriber_id, status="sent", sent_at=utcnow()
        )
        sent.attempts = 1
        failed = await make_delivery(
            session, event=second, subscriber_id=study.subscriber_id, status="failed", attempts=2
        )
        failed.last_error = f"550 5.1.1 <{ADA}>: mailbox unavailable"  # servers quote addresses
        await make_delivery(session, event=first, subscriber_id=bob.subscriber_id, status="sent")
    return {"study": study, "condition": condition, "events": (first, second)}


async def test_export_returns_consent_evidence_and_deliveries(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    made = await _history(resources)
    resp = await client.post(
        "/v1/bounces", json={"email": ADA, "kind": "soft", "detail": "452 4.2.2 full"}, headers=AUTH
    )
    assert resp.status == 200

    resp = await client.get("/v1/admin/subscribers", params={"email": ADA.upper()}, headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    data = await resp.json()
    assert data["subscriber"]["email"] == ADA
    assert data["subscriber"]["timezone"] == "UTC"
    assert data["subscriber"]["first_confirmed_at"] is not None
    study, condition = data["subscriptions"]
    assert (study["label"], study["status"]) == ("NCT05879978", "confirmed")
    assert study["consent"] == {
        "requested_at": made["study"].requested_at.isoformat(),
        "request_ip": "203.0.113.7",
        "request_user_agent": "Mozilla/5.0 (factory)",
        "request_source": "https://trials.example.org/study/NCT05879978",
        "confirmed_at": made["study"].confirmed_at.isoformat(),
        "confirm_ip": "203.0.113.8",
        "confirm_user_agent": "Mozilla/5.0 (factory confirm)",
    }
    assert (condition["kind"], condition["status"]) == ("condition", "pending")
    assert condition["consent"]["confirmed_at"] is None
    assert condition["consent"]["request_source"] == "https://trials.example.org/conditions"
    first, second = made["events"]
    assert [
        (d["event_id"], d["nct_id"], d["status"], d["attempts"]) for d in data["deliveries"]
    ] == [
        (first.event_id, "NCT05879978", "sent", 1),
        (second.event_id, "NCT05879978", "failed", 2),
    ]
    assert data["deliveries"][0]["sent_at"] is not None
    assert data["suppression"] is None
    assert [(b["kind"], b["detail"]) for b in data["bounces"]] == [("soft", "452 4.2.2 full")]


async def _where_found(resources: Resources, needle: str) -> list[str]:
    """Every table column, and every Redis key or string value, that contains `needle`."""
    needle = needle.lower()
    hits: list[str] = []
    async with resources.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in (await conn.execute(select(table))).mappings():
                hits += [
                    f"{table.name}.{column}"
                    for column, value in row.items()
                    if value is not None and needle in str(value).lower()
                ]
    async for key in resources.redis.scan_iter():
        if needle.encode() in key.lower():
            hits.append(f"redis key {key!r}")
        elif await resources.redis.type(key) == b"string":
            value = await resources.redis.get(key)
            if value is not None and needle.encode() in value.lower():
                hits.append(f"redis value {key!r}")
    return hits


async def test_erase_leaves_only_a_suppressed_hash(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    await _history(resources)
    resp = await client.post(
        "/v1/bounces",
        json={"email": ADA, "kind": "hard", "detail": f"550 5.1.1 <{ADA}> unknown"},
        headers=AUTH,
    )
    assert await resp.json() == {"accepted": 1, "suppressed": 1}
    assert await _where_found(resources, ADA)  # the scan does see the address when it is there

    resp = await client.delete("/v1/admin/subscribers", params={"email": ADA}, headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {
        "erased": {"subscribers": 1, "subscriptions": 2, "deliveries": 2, "bounces": 1},
        "suppressed": True,
    }
    assert await _where_found(resources, ADA) == []

    data = await (
        await client.get("/v1/admin/subscribers", params={"email": ADA}, headers=AUTH)
    ).json()
    assert data["subscriber"] is None
    assert data["subscriptions"] == data["deliveries"] == data["bounces"] == []
    # The keyed hash alone remains: the earlier reason stands, its words (which quoted the
    # address) do not.
    assert data["suppression"]["email_hash"] == resources.email_hash(ADA)
    assert (data["suppression"]["reason"], data["suppression"]["detail"]) == ("hard_bounce", None)

    # Bob is untouched.
    bob = await (
        await client.get("/v1/admin/subscribers", params={"email": BOB}, headers=AUTH)
    ).json()
    assert bob["subscriber"]["email"] == BOB
    assert len(bob["subscriptions"]) == 1
    assert len(bob["deliveries"]) == 1

    # Erasing again is harmless.
    again = await client.delete("/v1/admin/subscribers", params={"email": ADA}, headers=AUTH)
    assert (await again.json())["erased"] == {
        "subscribers": 0,
        "subscriptions": 0,
        "deliveries": 0,
        "bounces": 0,
    }


async def test_after_erase_a_new_signup_is_silently_ignored(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email=ADA)
    resp = await client.delete("/v1/admin/subscribers", params={"email": ADA}, headers=AUTH)
    assert resp.status == 200
    data = await (
        await client.get("/v1/admin/subscribers", params={"email": ADA}, headers=AUTH)
    ).json()
    assert data["suppression"]["reason"] == "erased"

    signup = {"email": ADA, "study": "NCT05879978"}
    resp = await client.post(
        "/v1/subscriptions", json=signup, headers={"Origin": "https://trials.example.org"}
    )
    assert resp.status == 202
    assert await resp.json() == {"status": "pending"}  # the same answer as for anyone
    await run_worker(resources)
    assert smtp.transactions == 0
    async with resources.sessions.begin() as session:
        assert await session.scalar(select(Subscriber.id)) is None
    assert await _where_found(resources, ADA) == []

    # Once the operator lifts the suppression, the address may sign up again.
    resp = await client.delete("/v1/admin/suppressions", params={"email": ADA}, headers=AUTH)
    assert resp.status == 200
    resp = await client.post(
        "/v1/subscriptions", json=signup, headers={"Origin": "https://trials.example.org"}
    )
    assert resp.status == 202
    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1


async def test_erased_ids_are_never_handed_out_again(resources: Resources) -> None:
    """Ids go into signed manage/unsubscribe links: after an erase, a new address must not get
    the old id (SQLite reuses the highest rowid unless the table is AUTOINCREMENT)."""
    async with resources.sessions.begin() as session:
        await session.execute(
            insert(Subscriber).values(email="ann@example.org", email_hash="h-ann")
        )
        ann = await session.scalar(
            select(Subscriber.id).where(Subscriber.email == "ann@example.org")
        )
        await session.execute(delete(Subscriber).where(Subscriber.id == ann))
        await session.execute(
            insert(Subscriber).values(email="bob@example.org", email_hash="h-bob")
        )
        bob = await session.scalar(
            select(Subscriber.id).where(Subscriber.email == "bob@example.org")
        )
    assert bob != ann


async def test_export_finds_the_address_in_any_spelling_signup_accepts(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    """Found in review: the admin endpoints hashed the raw input, so a differently written
    (case, Unicode form) address missed the stored row and erase reported nothing."""
    resp = await client.post(
        "/v1/subscriptions", json={"email": "Zoë@Example.ORG", "study": "NCT05879978"}
    )
    assert resp.status == 202
    resp = await client.get(
        "/v1/admin/subscribers",
        params={"email": "ZOE\u0308@example.org"},  # decomposed: E + combining diaeresis
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["subscriber"]["email"] == "zoë@example.org"
