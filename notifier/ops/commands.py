"""Operator commands `notifier send-test|replay|stats|sync`: results on stdout, progress on
stderr."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TextIO
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email
from jinja2 import ChoiceLoader, DictLoader
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core import events
from notifier.data import heartbeat
from notifier.data.models import (
    Delivery,
    Event,
    EventDeliveryCount,
    FanoutSlice,
    RejectedEvent,
    Subscriber,
    Subscription,
    Suppression,
)
from notifier.data.states import OPEN_EVENT
from notifier.mail.message import Mail, message_id, sender_address, to_bytes
from notifier.mailer import ConnectionLost, SendError
from notifier.queue import enqueue_fanout, enqueue_sends
from notifier.resources import Resources, open_resources
from notifier.settings import Settings

# Statuses always listed by `stats` (zeros included, so that scripts can rely on the keys).
KNOWN = {
    "subscriptions": ("pending", "confirmed", "unsubscribed"),
    "events": ("received", "fanning_out", "fanned_out", "immaterial"),
    "deliveries": ("pending", "sending", "sent", "failed", "skipped", "held"),
    "fanout_slices": ("pending", "sending", "done"),
}

# The test mail uses the notification layout, so it shows what real alerts look like. It lives
# here rather than in templates/mail/: it is no mail a subscriber receives.
_TEST_TEXT = """{% extends "mail/base.txt" %}
{% block body %}
Test message from {{ site_name }}

The operator of the clinical-trial alert service sent this message with
`notifier send-test` to check that mail reaches this address.

Sent at:     {{ sent_at }}
Relay:       {{ relay }}
Message-ID:  {{ msgid }}

If it landed in a spam folder, real alerts probably will too: check the
sending domain's SPF, DKIM and DMARC records.
{% endblock %}
{% block footer %}
This is a test: it does not subscribe this address to anything.
{% endblock %}
{% block why %}
The operator of {{ site_name }}'s alert service sent it; nobody asked for alerts at this address.
{% endblock %}
"""
_TEST_HTML = """{% extends "mail/base.html" %}
{% block body %}
<h1 style="margin:0 0 16px;font-size:22px;line-height:1.3;">Test message from {{ site_name }}</h1>
<p style="margin:0 0 16px;">The operator of the clinical-trial alert service sent this message
with <code>notifier send-test</code> to check that mail reaches this address.</p>
<p style="margin:0 0 16px;font-size:14px;">Sent at: {{ sent_at }}<br>Relay: {{ relay }}<br>
Message-ID: <span style="word-break:break-all;">{{ msgid }}</span></p>
<p style="margin:0;">If it landed in a spam folder, real alerts probably will too: check the
sending domain's SPF, DKIM and DMARC records.</p>
{% endblock %}
{% block footer %}
<p style="margin:0;">This is a test: it does not subscribe this address to anything.</p>
{% endblock %}
{% block why %}
<p style="margin:8px 0 0;">The operator of {{ site_name }}'s alert service sent it; nobody
asked for alerts at this address.</p>
{% endblock %}
"""


@dataclass
class Console:
    out: TextIO
    err: TextIO

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def progress(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()


def run(settings: Settings, args: argparse.Namespace, console: Console | None = None) -> int:
    """Run one operator command to completion; the exit status says how it went."""
    con = console or Console(sys.stdout, sys.stderr)

    async def main() -> int:
        async with open_resources(settings) as r:
            return await _dispatch(r, args, con)

    try:
        return asyncio.run(main())
    except (OperationalError, DBAPIError, PoolTimeout) as exc:
        con.progress(f"notifier: database not reachable: {type(exc).__name__}")
    except (RedisError, OSError) as exc:
        con.progress(f"notifier: database or Redis not reachable: {type(exc).__name__}: {exc}")
    return 2


async def _dispatch(r: Resources, args: argparse.Namespace, con: Console) -> int:
    if args.command == "send-test":
        return await send_test(r, args.address, con, force=args.force)
    if args.command == "replay":
        follow = args.timeout if args.wait else None
        return await replay(r, args.event_id, con, follow_for=follow)
    if args.command == "stats":
        return await stats(r, con, as_json=args.json)
    if args.command == "sync":
        from notifier.ops.sync import Options, sync_command

        opts = Options.of(
            r,
            since=args.since,
            base_url=args.base_url,
            page_size=args.page_size,
            alerts=not args.no_alerts,
        )
        interval = args.interval or r.settings.sync_interval or 3600.0
        return await sync_command(
            r, opts, once=args.once, interval=interval, out=con.out, err=con.err
        )
    raise ValueError(f"not an operator command: {args.command}")


# ---- send-test ---------------------------------------------------------------------------------


def render_test_mail(r: Resources, to: str, msgid: str) -> Mail:
    settings = r.settings
    subject = f"Test message from {settings.site_name}"
    context = {
        "site_name": settings.site_name,
        "subject": subject,
        "preheader": "Sent by the operator to check mail delivery.",
        "sent_at": utcnow().strftime("%Y-%m-%d %H:%M:%S UTC"),
        "relay": f"{r.mailer.config.host}:{r.mailer.config.port}",
        "msgid": msgid,
    }
    # Named templates in an overlay: the environment's rules (HTML autoescaped) apply by name.
    own = DictLoader({"send_test.txt": _TEST_TEXT, "send_test.html": _TEST_HTML})
    loader = ChoiceLoader([own] if r.templates.loader is None else [own, r.templates.loader])
    templates = r.templates.overlay(loader=loader)
    text = templates.get_template("send_test.txt").render(context)
    html = templates.get_template("send_test.html").render(context)
    return Mail(to=to, subject=subject, text=text, html=html, headers={"X-Notifier-Test": "yes"})


async def send_test(r: Resources, address: str, con: Console, *, force: bool = False) -> int:
    """Mail a test message through the configured relay and say what the relay answered."""
    try:
        to = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        con.progress(f"not a valid address: {exc}")
        return 2
    async with r.sessions() as session:
        reason = await session.scalar(
            select(Suppression.reason).where(Suppression.email_hash == r.email_hash(to))
        )
    if reason is not None and not force:
        con.say(f"not sent: {to} is on the suppression list ({reason}); --force sends anyway")
        return 1
    msgid = message_id(r.settings)
    data = to_bytes(r.settings, render_test_mail(r, to, msgid), msgid=msgid)
    con.progress(f"sending to {to} via {r.mailer.config!r} …")
    started = time.perf_counter()
    try:
        await r.mailer.send_one(sender_address(r.settings), to, data)
    except ConnectionLost as exc:
        con.say(f"not sent: cannot talk to the SMTP relay: {exc}")
        return 1
    except SendError as exc:
        kind = "refused permanently" if exc.permanent else "deferred (temporary failure)"
        con.say(f"not sent: {kind}: {exc}")
        if exc.suppresses:
            con.say("a real notification would put this address on the suppression list")
        return 1
    ms = (time.perf_counter() - started) * 1000
    con.say(f"sent: {msgid} to {to}, accepted by the relay in {ms:.0f} ms")
    return 0


# ---- replay ------------------------------------------------------------------------------------


async def replay(
    r: Resources,
    event_id: str,
    con: Console,
    *,
    follow_for: float | None = None,
    interval: float = 1.0,
) -> int:
    """Fan a stored event out again from the first subscriber.

    Safe to repeat: delivery rows are unique per (event, subscriber), so whoever already has a
    row gets no second mail; subscribers who match now but did not then get it once. Pending
    deliveries that are due are re-enqueued too (their claim is atomic, so a twin job is moot).
    """
    async with r.sessions.begin() as session:
        event = await session.scalar(select(Event).where(Event.event_id == event_id))
        if event is None:
            con.say(f"no stored event with event_id {event_id!r}")
            return 1
        before = event.status
        refusal = _too_old(r, event)
        # Guarded as well: retention may compact the event between the read and this update
        # (it locks the event rows first, so this waits for it and then finds it compacted).
        reopened = refusal is None and await session.scalar(
            update(Event)
            .where(Event.id == event.id, *_replayable(r))
            .values(status="received", fanout_cursor=0, matched=0, fanned_out_at=None)
            .returning(Event.id)
        )
        if not reopened:
            con.say(
                f"refused: event {event_id} {refusal or 'was just compacted by retention'}. "
                "Its delivery rows are gone (only their counts are kept), so a replay could "
                "no longer tell who was already mailed and would mail them again. Nothing "
                "was changed."
            )
            return 1
        due = list(
            await session.scalars(
                select(Delivery.id)
                .where(
                    Delivery.event_pk == event.id,
                    Delivery.status == "pending",
                    Delivery.next_attempt_at <= utcnow(),
                )
                .order_by(Delivery.id)
            )
        )
    stamp = f"{utcnow().timestamp():.6f}"
    await enqueue_fanout(r, event.id, "replay", stamp)
    await enqueue_sends(r, due, f"replay:{event.id}:{stamp}", [event.id] * len(due))
    con.say(
        f"event {event_id} ({event.nct_id}, {event.change_kind}): was {before}, fan-out "
        f"enqueued from the start; {len(due)} due pending deliveries re-enqueued"
    )
    if follow_for is None:
        path = f"/v1/admin/events/{quote(event_id, safe='')}"
        con.say(f"the worker does the rest: follow it with --wait or GET {path}")
        return 0
    return await _follow(r, event_id, con, follow_for, interval)


def _cutoff(r: Resources) -> datetime | None:
    days = r.settings.delivery_retention_days
    return utcnow() - timedelta(days=days) if days else None


def _too_old(r: Resources, event: Event) -> str | None:
    """Why retention forbids replaying `event` (None: it may be replayed)."""
    if event.compacted_at is not None:
        return f"was compacted by retention on {event.compacted_at:%Y-%m-%d %H:%M} UTC"
    cutoff = _cutoff(r)
    if cutoff is not None and event.fanned_out_at is not None and event.fanned_out_at < cutoff:
        return (
            f"finished on {event.fanned_out_at:%Y-%m-%d %H:%M} UTC, more than "
            f"NOTIFIER_DELIVERY_RETENTION_DAYS={r.settings.delivery_retention_days} days ago"
        )
    return None


def _replayable(r: Resources) -> list[Any]:
    """_too_old as WHERE clauses, for the update that re-opens the event."""
    clauses: list[Any] = [Event.compacted_at.is_(None)]
    cutoff = _cutoff(r)
    if cutoff is not None:
        clauses.append(or_(Event.fanned_out_at.is_(None), Event.fanned_out_at >= cutoff))
    return clauses


async def _follow(
    r: Resources, event_id: str, con: Console, seconds: float, interval: float
) -> int:
    deadline = time.monotonic() + seconds
    last: dict[str, Any] | None = None
    while True:
        async with r.sessions() as session:
            now = await events.progress(session, event_id)
        if now is None:
            con.say(f"event {event_id} is gone (erased?)")
            return 1
        if now != last:
            con.progress(
                "  {status}: matched {matched}, sent {sent}, pending {pending}, held {held}, "
                "failed {failed}, skipped {skipped}".format(**now)
            )
            last = now
        if now["status"] not in OPEN_EVENT and now["pending"] == 0:
            con.say(f"done: {now['status']}, {now['sent']} sent, {now['failed']} failed")
            return 0
        if time.monotonic() >= deadline:
            con.say(f"still in progress after {seconds:.0f} s; the worker carries on")
            return 1
        await asyncio.sleep(interval)


# ---- stats -------------------------------------------------------------------------------------


async def _by_status(session: AsyncSession, model: Any, section: str) -> dict[str, int]:
    rows = (await session.execute(select(model.status, func.count()).group_by(model.status))).all()
    counts = dict.fromkeys(KNOWN[section], 0)
    for status, n in rows:
        counts[str(status)] = counts.get(str(status), 0) + int(n)
    if model is Delivery:  # and the rows retention removed, as per-event counts
        compacted = await session.execute(
            select(EventDeliveryCount.status, func.sum(EventDeliveryCount.count)).group_by(
                EventDeliveryCount.status
            )
        )
        for status, n in compacted:
            counts[str(status)] = counts.get(str(status), 0) + int(n or 0)
    return counts


async def _count(session: AsyncSession, column: Any, *where: Any) -> int:
    return int(await session.scalar(select(func.count(column)).where(*where)) or 0)


async def collect_stats(r: Resources, con: Console) -> dict[str, Any]:
    """Counts of everything an operator asks about first; each section reports as it starts."""
    out: dict[str, Any] = {}
    async with r.sessions() as session:
        con.progress("counting subscribers …")
        out["subscribers"] = await _count(session, Subscriber.id)
        con.progress("counting subscriptions …")
        out["subscriptions"] = await _by_status(session, Subscription, "subscriptions")
        out["subscriptions_paused"] = await _count(
            session, Subscription.id, Subscription.status == "confirmed", Subscription.paused
        )
        con.progress("counting events …")
        out["events"] = await _by_status(session, Event, "events")
        out["events_rejected"] = await _count(session, RejectedEvent.id)
        out["events_compacted"] = await _count(session, Event.id, Event.compacted_at.is_not(None))
        con.progress("counting deliveries …")
        out["deliveries"] = await _by_status(session, Delivery, "deliveries")
        out["fanout_slices"] = await _by_status(session, FanoutSlice, "fanout_slices")
        rows = await session.execute(
            select(Suppression.reason, func.count()).group_by(Suppression.reason)
        )
        out["suppressions"] = {str(reason): int(n) for reason, n in rows.all()}
    con.progress("reading the queue …")
    queue = r.settings.queue_name
    now_ms = int(time.time() * 1000)  # arq scores queued jobs by their due time in ms
    depth = int(await r.redis.zcard(queue))
    ready = int(await r.redis.zcount(queue, "-inf", now_ms))
    out["queue"] = {"depth": depth, "ready": ready, "deferred": depth - ready}
    out["workers"] = heartbeat.summary(await heartbeat.alive(r.redis, queue))
    return out


def _line(counts: dict[str, int]) -> str:
    return " · ".join(f"{name} {n}" for name, n in counts.items()) or "none"


async def stats(r: Resources, con: Console, *, as_json: bool = False) -> int:
    data = await collect_stats(r, con)
    if as_json:
        con.say(json.dumps(data, indent=2, sort_keys=True))
        return 0
    con.say(f"subscribers     {data['subscribers']}")
    con.say(
        f"subscriptions   {_line(data['subscriptions'])} (paused {data['subscriptions_paused']})"
    )
    con.say(
        f"events          {_line(data['events'])} (rejected {data['events_rejected']}, "
        f"rows compacted {data['events_compacted']})"
    )
    con.say(f"deliveries      {_line(data['deliveries'])}")
    con.say(f"fan-out slices  {_line(data['fanout_slices'])}")
    con.say(f"suppressions    {_line(data['suppressions'])}")
    con.say(f"queue           {_line(data['queue'])}")
    workers = data["workers"]
    con.say(
        f"workers         alive {workers['alive']} · last job {workers['last_job_at'] or 'none'}"
    )
    for w in workers["workers"]:
        con.say(
            f"  {w['host']} pid {w['pid']}: started {w['started_at']}, "
            f"last job {w['last_job_at'] or 'none'}"
        )
    return 0
