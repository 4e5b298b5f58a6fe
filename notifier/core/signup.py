"""Signup: record the request (subscriber, pending subscription, consent) and queue the mail."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from sqlalchemy import Row, String, Table, bindparam, case, exists, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from notifier.clock import utcnow
from notifier.core.normalize import storable
from notifier.core.ratelimit import mailbox_hash, may_mail_address
from notifier.core.signup_input import EVIDENCE_MAX, SignupRequest, Target
from notifier.data.models import Subscriber, Subscription, Suppression, UTCDateTime
from notifier.data.queries import dialect_insert
from notifier.queue import enqueue_confirmation
from notifier.resources import Resources

# A bot that knows one address could otherwise pile up rows under it; a person never needs more.
MAX_PENDING_PER_ADDRESS = 25
WANTS_MAIL = frozenset({"new", "pending", "resubscribed"})


@dataclass(frozen=True)
class Evidence:
    """Who asked, from where: stored with the subscription as proof of consent."""

    ip: str
    user_agent: str | None
    source: str | None

    @classmethod
    def of(cls, ip: str, user_agent: str | None, source: str | None) -> Evidence:
        def bounded(value: str | None) -> str | None:
            # Header bytes that are not UTF-8 reach us as surrogate escapes: kept as U+FFFD.
            return storable(value[:EVIDENCE_MAX]) if value else None

        return cls(ip=storable(ip[:64]), user_agent=bounded(user_agent), source=bounded(source))


@dataclass(frozen=True)
class Recorded:
    outcome: str  # new | pending | resubscribed | confirmed | too_many_pending | suppressed
    subscriber_id: int = 0
    confirmed_before: bool = False

    @property
    def wants_mail(self) -> bool:
        return self.outcome in WANTS_MAIL


def new_nonce() -> str:
    return secrets.token_hex(16)


async def sign_up(r: Resources, req: SignupRequest, evidence: Evidence) -> str:
    """Record a signup and, within the address's limits, queue one confirmation mail.

    Returns the outcome for metrics; the caller answers the same way whatever it is.
    """
    if req.website:
        return "honeypot"
    email_hash = r.email_hash(req.email)
    for attempt in (1, 2):
        try:
            async with r.sessions.begin() as session:
                recorded = await _record(session, req, email_hash, evidence)
            break
        except IntegrityError:
            # A key raced by a concurrent writer: once more, on fresh reads.
            if attempt == 2:
                raise
    if not recorded.wants_mail:
        return recorded.outcome
    mailbox = mailbox_hash(r, req.email)
    if not await may_mail_address(r, email_hash, recorded.confirmed_before, mailbox):
        # Refused its mail on purpose: the sweep, which mails requests whose job was lost,
        # must not mail this one either (a written stamp, on this path only).
        async with r.sessions.begin() as session:
            await session.execute(
                update(Subscriber)
                .where(Subscriber.id == recorded.subscriber_id)
                .values(confirm_job_at=utcnow())
            )
        return "rate_limited"
    await enqueue_confirmation(r, recorded.subscriber_id)
    return recorded.outcome


# Signup is the busiest write. It runs Core statements built once, with bound parameters: no
# ORM objects to load or flush, and no statement to compose per request (composing one and its
# cache key costs more CPU than executing it).
SUBSCRIBERS = cast(Table, Subscriber.__table__)
SUBSCRIPTIONS = cast(Table, Subscription.__table__)
SUPPRESSIONS = cast(Table, Suppression.__table__)

SUBSCRIPTIONS_OF = select(
    SUBSCRIPTIONS.c.id, SUBSCRIPTIONS.c.match_key, SUBSCRIPTIONS.c.status
).where(SUBSCRIPTIONS.c.subscriber_id == bindparam("subscriber_id"))
INSERT_SUBSCRIPTION = insert(SUBSCRIPTIONS)  # the columns are the parameters' keys
# Conditional on the status the decision was made on; SET: the parameters' column keys.
UPDATE_SUBSCRIPTION = update(SUBSCRIPTIONS).where(
    SUBSCRIPTIONS.c.id == bindparam("seen_id"), SUBSCRIPTIONS.c.status == bindparam("seen_status")
)
SET_NONCE = (
    update(SUBSCRIBERS)
    .where(SUBSCRIBERS.c.id == bindparam("subscriber_id"))
    .values(confirm_nonce=bindparam("nonce"))
)
# What a resubscription resets besides the request: the old consent is void.
CONSENT_VOID: dict[str, Any] = {
    "status": "pending",
    "confirmed_at": None,
    "unsubscribed_at": None,
    "confirm_ip": None,
    "confirm_user_agent": None,
    "unsubscribe_reason": None,
}


@cache
def upsert_subscriber(dialect_name: str, timezone_given: bool) -> Any:
    """Insert the address unless it is suppressed, or lock its existing row; returns
    (id, confirm_nonce, first_confirmed_at), or no row when suppressed (nothing written).

    The conflict's UPDATE locks the row, so concurrent signups of one address run one after the
    other (and one that meets the purge deleting the row waits, then inserts afresh). On SQLite
    the INSERT takes the database's write lock at once.
    """
    stmt = dialect_insert(dialect_name, SUBSCRIBERS)
    stmt = stmt.from_select(
        ["email", "email_hash", "timezone", "confirm_nonce", "created_at"],
        select(
            bindparam("address", type_=String()),
            bindparam("address_hash", type_=String()),
            bindparam("zone", type_=String()),
            bindparam("nonce", type_=String()),
            bindparam("now", type_=UTCDateTime()),
        ).where(~exists().where(SUPPRESSIONS.c.email_hash == bindparam("address_hash"))),
    )
    timezone: Any = SUBSCRIBERS.c.timezone  # unchanged: the UPDATE is there for its lock
    if timezone_given:
        # Only until the address confirms; afterwards the preference centre owns it.
        timezone = case(
            (SUBSCRIBERS.c.first_confirmed_at.is_(None), stmt.excluded.timezone), else_=timezone
        )
    return stmt.on_conflict_do_update(
        index_elements=[SUBSCRIBERS.c.email], set_={"timezone": timezone}
    ).returning(SUBSCRIBERS.c.id, SUBSCRIBERS.c.confirm_nonce, SUBSCRIBERS.c.first_confirmed_at)


async def _record(
    session: AsyncSession, req: SignupRequest, email_hash: str, evidence: Evidence
) -> Recorded:
    conn = await session.connection()
    now, nonce = utcnow(), new_nonce()
    upsert = upsert_subscriber(conn.dialect.name, bool(req.timezone))
    subscriber: Row[Any] | None = (
        await conn.execute(
            upsert,
            {
                "address": req.email,
                "address_hash": email_hash,
                "zone": req.timezone or "UTC",
                "nonce": nonce,
                "now": now,
            },
        )
    ).one_or_none()
    if subscriber is None:
        return Recorded("suppressed")
    confirmed_before = subscriber.first_confirmed_at is not None
    # The latest request is what the confirmation will confirm, with its evidence.
    request = {
        "frequency": req.frequency,
        "requested_at": now,
        "request_ip": evidence.ip,
        "request_user_agent": evidence.user_agent,
        "request_source": evidence.source,
        "updated_at": now,
    }
    targets = req.targets
    if subscriber.confirm_nonce == nonce:
        # Our nonce came back, so the row is our insert: a new address, nothing under it yet.
        for target in targets:
            await conn.execute(
                INSERT_SUBSCRIPTION, _new_subscription(subscriber.id, target, request)
            )
        return Recorded("new", subscriber.id, confirmed_before)
    # A study and its condition in one request: one outcome, the one that asks for a mail.
    outcomes = []
    pending_before = None
    for target in targets:
        outcome, pending = await _record_subscription(conn, subscriber.id, target, request)
        outcomes.append(outcome)
        pending_before = pending if pending_before is None else pending_before
    outcome = next((o for o in outcomes if o in WANTS_MAIL), outcomes[0])
    if outcome in WANTS_MAIL and (subscriber.confirm_nonce is None or not pending_before):
        # Links mailed in an earlier round (nothing pending since) must not confirm this one.
        await conn.execute(SET_NONCE, {"subscriber_id": subscriber.id, "nonce": nonce})
    return Recorded(outcome, subscriber.id, confirmed_before)


def _what(target: Target) -> dict[str, Any]:
    return {
        "label": target.label,
        "mesh_id": target.mesh_id,
        "requires": target.requires,
        "resolved": target.resolved,
        "event_kinds": target.event_kinds,
        "broad": target.broad,
    }


def _new_subscription(
    subscriber_id: int, target: Target, request: dict[str, Any]
) -> dict[str, Any]:
    return {
        "subscriber_id": subscriber_id,
        "kind": target.kind,
        "match_key": target.match_key,
        **_what(target),
        "status": "pending",
        "discreet": target.kind == "condition",
        **request,
    }


async def _record_subscription(
    conn: AsyncConnection, subscriber_id: int, target: Target, request: dict[str, Any]
) -> tuple[str, int]:
    """Add or refresh the subscription of an address that existed: (outcome, pending before).

    The address's rows are read without a lock and a write is conditional on the status it saw.
    Only an unsubscribe, a suppression or the purge can change a row meanwhile (the rest waits
    for the subscriber row this transaction holds), and they only end a row or delete a pending
    one: a changed row is read again, and the third read is final.
    """
    for _ in range(3):
        rows = (await conn.execute(SUBSCRIPTIONS_OF, {"subscriber_id": subscriber_id})).all()
        pending_before = sum(row.status == "pending" for row in rows)
        existing = next((row for row in rows if row.match_key == target.match_key), None)
        if existing is not None and existing.status == "confirmed":
            return "confirmed", pending_before  # a repeat signup never downgrades a confirmation
        if existing is None or existing.status != "pending":
            if pending_before >= MAX_PENDING_PER_ADDRESS:
                return "too_many_pending", pending_before
            if existing is None:
                await conn.execute(
                    INSERT_SUBSCRIPTION, _new_subscription(subscriber_id, target, request)
                )
                return "new", pending_before
            # Unsubscribed: pending again, with fresh evidence; the old consent is void.
            outcome, changes = "resubscribed", {**request, **_what(target), **CONSENT_VOID}
        else:
            outcome, changes = "pending", {**request, **_what(target)}
        seen = {"seen_id": existing.id, "seen_status": existing.status}
        updated = await conn.execute(UPDATE_SUBSCRIPTION, {**changes, **seen})
        if updated.rowcount == 1:
            return outcome, pending_before
    raise RuntimeError(f"subscriber {subscriber_id}: a subscription kept changing during signup")
