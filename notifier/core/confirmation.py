"""Double opt-in: what the confirm link's page shows and what its POST does.

The mail with the link is jobs.notices.send_confirmation."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core.concepts import meaning
from notifier.core.names import subscription_name
from notifier.core.signup import Evidence, new_nonce
from notifier.data.models import Subscriber, Subscription
from notifier.data.queries import is_suppressed
from notifier.data.study_queries import study_headlines, study_titles
from notifier.resources import Resources

log = logging.getLogger("notifier.confirmations")

FREQUENCY_WORDS = {"instant": "as it happens", "daily": "daily digest", "weekly": "weekly digest"}


class LinkUnusable(Exception):
    """A genuine confirm link that can no longer confirm: used, or nothing pending (410)."""


class AlreadyConfirmed(LinkUnusable):
    """A used link of an address that is subscribed: say so, never "sign up again"."""

    def __init__(self, items: list[Item]) -> None:
        super().__init__("already confirmed")
        self.items = items


async def _unusable(session: AsyncSession, r: Resources, subscriber: Subscriber | None) -> NoReturn:
    """Raise why a genuine link cannot confirm: AlreadyConfirmed when the address has active
    subscriptions (a reused link, a second click), else LinkUnusable."""
    if subscriber is not None and not await is_suppressed(session, r.email_hash(subscriber.email)):
        rows = list(
            await session.scalars(
                select(Subscription)
                .where(
                    Subscription.subscriber_id == subscriber.id,
                    Subscription.status == "confirmed",
                )
                .order_by(Subscription.id)
            )
        )
        if rows:
            raise AlreadyConfirmed(await describe(session, rows))
    raise LinkUnusable("already used, nothing pending, or the address was erased")


async def titles_of(session: AsyncSession, rows: Iterable[Any]) -> dict[str, str]:
    """The titles of the studies among subscriptions (anything with .kind and .label), from
    the catalogue (records, or the newest event that named the study)."""
    return await study_titles(session, (row.label for row in rows if row.kind == "study"))


@dataclass(frozen=True)
class Item:
    """A subscription as the confirm mail and pages show it: labels only, never other input."""

    id: int
    kind: str
    label: str
    mesh_id: str | None
    broad: bool
    frequency: str
    meaning: str | None = None  # what a condition resolved to, in plain words
    title: str | None = None  # a study's title, when the catalogue knows it
    status: str | None = None  # and its overall status (a CT.gov code)

    @classmethod
    def of(cls, row: Subscription, study: tuple[str, str | None] | None = None) -> Item:
        plain = meaning(row.mesh_id, row.requires, row.label) if row.kind == "condition" else None
        title, status = study if study is not None else (None, None)
        return cls(
            row.id, row.kind, row.label, row.mesh_id, row.broad, row.frequency, plain, title, status
        )

    @property
    def name(self) -> str:
        """The study's title and NCT id (or the NCT id alone), or the condition."""
        return subscription_name(self.kind, self.label, {self.label: self.title or ""})

    @property
    def description(self) -> str:
        if self.kind == "study":
            what = f"every change to the study {self.name}"
        else:
            what = f"new studies on “{self.label}”"
            if self.meaning:
                what += f" ({self.meaning})"
        return f"{what}, {FREQUENCY_WORDS.get(self.frequency, self.frequency)}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def describe(session: AsyncSession, rows: list[Subscription]) -> list[Item]:
    """Items for pages and mail, studies named by their title and current status."""
    known = await study_headlines(session, [row.label for row in rows if row.kind == "study"])
    return [Item.of(row, known.get(row.label) if row.kind == "study" else None) for row in rows]


async def pending_subscriptions(
    session: AsyncSession, subscriber_id: int, ids: list[int] | None = None, *, lock: bool = False
) -> list[Subscription]:
    query = select(Subscription).where(
        Subscription.subscriber_id == subscriber_id, Subscription.status == "pending"
    )
    if ids is not None:
        query = query.where(Subscription.id.in_(ids))
    if lock:
        query = query.with_for_update()
    return list(await session.scalars(query.order_by(Subscription.id)))


async def pending_for_link(r: Resources, token: str) -> list[Item]:
    """What a confirm link would confirm; changes nothing (link scanners GET every link)."""
    subscriber_id, nonce = r.tokens.read_confirm(token)  # TokenInvalid -> 404, TokenExpired -> 410
    async with r.sessions.begin() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        if subscriber is None or not hmac.compare_digest(subscriber.confirm_nonce or "", nonce):
            await _unusable(session, r, subscriber)
        if await is_suppressed(session, r.email_hash(subscriber.email)):
            raise LinkUnusable("address suppressed")
        rows = await pending_subscriptions(session, subscriber_id)
        if not rows:
            await _unusable(session, r, subscriber)
        return await describe(session, rows)


async def confirm_link(
    r: Resources, token: str, ids: list[int] | None, evidence: Evidence
) -> list[Item]:
    """Confirm the pending subscriptions the page listed (all pending when `ids` is None).

    Single use: the subscriber's nonce is swapped in the same statement that checks it, so a
    second POST (or a concurrent one) finds it gone. Unsubscribed rows are never touched.
    """
    subscriber_id, nonce = r.tokens.read_confirm(token)
    async with r.sessions.begin() as session:
        swapped = await session.execute(
            update(Subscriber)
            .where(Subscriber.id == subscriber_id, Subscriber.confirm_nonce == nonce)
            .values(confirm_nonce=new_nonce())
            .execution_options(synchronize_session=False)
        )
        if swapped.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult has rowcount
            await _unusable(session, r, await session.get(Subscriber, subscriber_id))
        subscriber = await session.get(Subscriber, subscriber_id, populate_existing=True)
        # Raising below rolls the nonce swap back: a refused confirm changes nothing.
        if subscriber is None or await is_suppressed(session, r.email_hash(subscriber.email)):
            raise LinkUnusable("address suppressed")
        rows = await pending_subscriptions(session, subscriber_id, ids, lock=True)
        if not rows:
            await _unusable(session, r, subscriber)
        now = utcnow()
        for row in rows:
            row.status = "confirmed"
            row.confirmed_at = now
            row.confirm_ip = evidence.ip
            row.confirm_user_agent = evidence.user_agent
            row.updated_at = now
        if subscriber.first_confirmed_at is None:
            subscriber.first_confirmed_at = now
        return await describe(session, rows)
