"""Transactional mail jobs: the confirm link of a signup and a requested manage link."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from notifier.clock import utcnow
from notifier.core.confirmation import describe, pending_subscriptions
from notifier.core.preferences import manage_link_to_send
from notifier.core.signup import new_nonce
from notifier.data import queries
from notifier.data.models import Subscriber
from notifier.jobs.context import resources_of
from notifier.jobs.retry import retry_if_database_unreachable, retry_or_give_up
from notifier.mail.message import sender_address, to_bytes
from notifier.mail.notices import manage_link_mail, render_confirmation
from notifier.mailer import SendError
from notifier.metrics import MAILS
from notifier.resources import Resources

log = logging.getLogger("notifier.mail")


async def send_confirmation(ctx: dict[str, Any], subscriber_id: int) -> str:
    """Mail one confirm link listing every pending subscription of the address."""
    r = resources_of(ctx)
    try:
        return await _send_confirmation(r, ctx, subscriber_id)
    except (DBAPIError, PoolTimeout, OSError) as exc:
        # The signup was answered 202: its confirm link must outlive a database restart (found
        # by the soak: a signup at the moment PostgreSQL restarted never got its mail).
        retry_if_database_unreachable(exc, ctx, "confirmation mail")
        raise


async def _send_confirmation(r: Resources, ctx: dict[str, Any], subscriber_id: int) -> str:
    async with r.sessions.begin() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        if subscriber is None:
            return "gone"
        # This job ran for every request up to now: the sweep need not enqueue it again.
        subscriber.confirm_job_at = utcnow()
        email_hash = r.email_hash(subscriber.email)
        if await queries.is_suppressed(session, email_hash):
            return "suppressed"
        items = await describe(session, await pending_subscriptions(session, subscriber_id))
        if not items:
            return "nothing pending"
        if subscriber.confirm_nonce is None:
            subscriber.confirm_nonce = new_nonce()
        token = r.tokens.confirm(subscriber_id, subscriber.confirm_nonce)
        to = subscriber.email
    message = to_bytes(r.settings, render_confirmation(r.mail, to, items, token))
    try:
        await r.mailer.send_one(sender_address(r.settings), to, message)
    except SendError as exc:
        return await retry_or_give_up(
            r, ctx, email_hash, exc, f"confirmation mail to subscriber {subscriber_id}"
        )
    MAILS.labels(kind="confirm").inc()
    # By id, never the address: logs are kept and shipped where personal data must not go.
    log.info(
        "mail sent: confirmation link to subscriber %d (%d subscription(s))",
        subscriber_id,
        len(items),
    )
    return "sent"


async def send_manage_link(ctx: dict[str, Any], subscriber_id: int) -> str:
    """Mail a manage link; re-checks the address first (it may be erased or suppressed since)."""
    try:
        return await _send_manage_link(resources_of(ctx), ctx, subscriber_id)
    except (DBAPIError, PoolTimeout, OSError) as exc:
        # Asked for and answered 202 like a signup: the link must outlive a database restart too.
        retry_if_database_unreachable(exc, ctx, "manage link mail")
        raise


async def _send_manage_link(r: Resources, ctx: dict[str, Any], subscriber_id: int) -> str:
    async with r.sessions.begin() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        if subscriber is None or await queries.is_suppressed(session, subscriber.email_hash):
            return "skipped"
        mail = manage_link_mail(r.mail, subscriber.email, subscriber.id)
    try:
        await r.mailer.send_one(sender_address(r.settings), mail.to, to_bytes(r.settings, mail))
    except SendError as exc:
        return await retry_or_give_up(
            r, ctx, subscriber.email_hash, exc, f"manage link to subscriber {subscriber.id}"
        )
    MAILS.labels(kind="manage_link").inc()
    log.info("mail sent: manage link to subscriber %d", subscriber.id)
    return "sent"


async def manage_link_request(ctx: dict[str, Any], email_hash: str, mailbox_hash: str) -> str:
    """POST /v1/manage's deferred half: look the address up and mail a link if it may have one."""
    r = resources_of(ctx)
    try:
        subscriber_id = await manage_link_to_send(r, email_hash, mailbox_hash)
    except (DBAPIError, PoolTimeout, OSError) as exc:
        retry_if_database_unreachable(exc, ctx, "manage link request")
        raise
    if subscriber_id is None:
        return "nothing to send"
    return await send_manage_link(ctx, subscriber_id)
