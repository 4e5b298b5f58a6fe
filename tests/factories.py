"""Keyword-default factories that insert subscribers, subscriptions, events, deliveries."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core.normalize import normalize_condition, normalize_mesh_id, normalize_nct
from notifier.data.models import Delivery, Event, Subscriber, Subscription
from notifier.resources import Resources
from tests.conftest import DATA


async def make_subscriber(
    session: AsyncSession,
    r: Resources,
    *,
    email: str = "ada@example.org",
    timezone: str = "UTC",
    first_confirmed_at: datetime | None = None,
) -> Subscriber:
    """The subscriber for `email`, created when missing (the address is unique)."""
    email_hash = r.email_hash(email)
    found = await session.scalar(select(Subscriber).where(Subscriber.email_hash == email_hash))
    if found is not None:
        return found
    subscriber = Subscriber(
        email=email.strip().lower(),
        email_hash=email_hash,
        timezone=timezone,
        first_confirmed_at=first_confirmed_at,
        created_at=utcnow(),
    )
    session.add(subscriber)
    await session.flush()
    return subscriber


async def make_subscription(
    session: AsyncSession,
    r: Resources,
    *,
    email: str = "ada@example.org",
    kind: str = "study",
    label: str = "NCT05879978",
    status: str = "confirmed",
    frequency: str = "instant",
    paused: bool = False,
    mesh_id: str | None = None,
    broad: bool = False,
    event_kinds: list[str] | None = None,
    request_ip: str | None = "203.0.113.7",
    request_user_agent: str | None = "Mozilla/5.0 (factory)",
    request_source: str | None = "https://trials.example.org/study/NCT05879978",
    confirm_ip: str | None = "203.0.113.8",
    confirm_user_agent: str | None = "Mozilla/5.0 (factory confirm)",
) -> Subscription:
    """A study (`label` is the NCT id) or condition (`label` is the text) subscription."""
    now = utcnow()
    confirmed = status in ("confirmed", "unsubscribed")
    subscriber = await make_subscriber(
        session, r, email=email, first_confirmed_at=now if confirmed else None
    )
    if confirmed and subscriber.first_confirmed_at is None:
        subscriber.first_confirmed_at = now
    if kind == "study":
        nct = normalize_nct(label)
        if nct is None:
            raise ValueError(f"not an NCT id: {label!r}")
        label, match_key = nct, f"study:{nct}"
    else:
        match_key = f"cond:{normalize_condition(label)}"
    subscription = Subscription(
        subscriber_id=subscriber.id,
        kind=kind,
        match_key=match_key,
        label=label,
        mesh_id=normalize_mesh_id(mesh_id) if mesh_id else None,
        broad=broad,
        status=status,
        paused=paused,
        frequency=frequency,
        event_kinds=event_kinds,
        requested_at=now,
        request_ip=request_ip,
        request_user_agent=request_user_agent,
        request_source=request_source,
        confirmed_at=now if confirmed else None,
        confirm_ip=confirm_ip if confirmed else None,
        confirm_user_agent=confirm_user_agent if confirmed else None,
        unsubscribed_at=now if status == "unsubscribed" else None,
        unsubscribe_reason="link" if status == "unsubscribed" else None,
        updated_at=now,
    )
    session.add(subscription)
    await session.flush()
    return subscription


def event_payload(
    *, event_id: str | None = None, nct_id: str = "NCT05879978", change_kind: str | None = None
) -> dict[str, Any]:
    """A real example event (tests/data/events_examples.json) with a fresh or given event_id."""
    examples = json.loads((DATA / "events_examples.json").read_text())
    base = next((e for e in examples if e["nct_id"] == nct_id), examples[0])
    payload: dict[str, Any] = copy.deepcopy(base)
    payload["event_id"] = event_id or uuid.uuid4().hex
    payload["nct_id"] = nct_id
    payload["study"]["url"] = f"https://clinicaltrials.gov/study/{nct_id}"
    if change_kind is not None:
        payload["change_kind"] = change_kind
    return payload


async def make_event(
    session: AsyncSession,
    *,
    event_id: str | None = None,
    nct_id: str = "NCT05879978",
    change_kind: str | None = None,
    status: str = "fanned_out",
) -> Event:
    payload = event_payload(event_id=event_id, nct_id=nct_id, change_kind=change_kind)
    event = Event(
        event_id=payload["event_id"],
        nct_id=nct_id,
        change_kind=payload["change_kind"],
        payload=payload,
        received_at=utcnow(),
        status=status,
    )
    session.add(event)
    await session.flush()
    return event


async def make_delivery(
    session: AsyncSession,
    *,
    event: Event,
    subscriber_id: int,
    status: str = "pending",
    attempts: int = 0,
    sent_at: datetime | None = None,
) -> Delivery:
    now = utcnow()
    delivery = Delivery(
        event_pk=event.id,
        subscriber_id=subscriber_id,
        status=status,
        attempts=attempts,
        next_attempt_at=now,
        created_at=now,
        sent_at=sent_at,
    )
    session.add(delivery)
    await session.flush()
    return delivery
