"""send_path: 20k alert mails through the service's own render + MIME + SMTP sender to Postfix's
smtp-sink; baselines: the naive path (EmailMessage per recipient + aiosmtplib) and smtp-source."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
from typing import Any

from bench.baselines import naive_send_rate
from bench.common import STUDIES, Result, median, sink, smtp_source_rate
from notifier.core.matching import Matched
from notifier.core.tokens import Tokens
from notifier.mail.alerts import AlertRenderer
from notifier.mail.message import message_id, sender_address
from notifier.mail.templates import make_environment
from notifier.mailer import Mailer
from notifier.ops.sample_events import build_event
from notifier.resources import Resources
from notifier.settings import Settings

CONNECTIONS = 8  # a worker runs up to 8 send jobs at once, each on its own connection


def resources(settings: Settings) -> Resources:
    """Just what rendering and sending need (no database or Redis in this benchmark)."""
    return Resources(
        settings=settings,
        engine=None,
        sessions=None,
        redis=None,
        limits_storage=None,  # type: ignore[arg-type]
        mailer=Mailer(settings.smtp_url),
        templates=make_environment(),
        tokens=Tokens(settings.secret_keys, settings.confirm_max_age),
        outage=None,  # type: ignore[arg-type]
    )


def new_study_event() -> dict[str, Any]:
    record = json.loads((STUDIES / "NCT05879978.json").read_text())
    return build_event(record, "new_study")


def subscription(i: int) -> Matched:
    """As the send job's re-check reads it (core.matching.Matched, plain columns)."""
    return Matched(
        id=i,
        subscriber_id=i,
        kind="condition",
        match_key="cond:neuroendocrine tumors",
        label="Neuroendocrine Tumors",
        mesh_id=None,
        requires=None,
        status="confirmed",
        paused=False,
        frequency="instant",
        discreet=True,
        event_kinds=None,
    )


def render_all(r: Resources, event: dict[str, Any], n: int, batch: int = 100) -> list[bytes]:
    out = []
    renderer = AlertRenderer(r.mail, event)
    subs = [[subscription(i)] for i in range(n)]  # loaded from the database in the service
    start = time.perf_counter()
    for i in range(n):
        if i % batch == 0:
            renderer = AlertRenderer(r.mail, event)  # a new send job: one render per batch
        out.append(
            renderer.render_bytes(
                subscriber_id=i,
                email=f"user{i}@example.org",
                subscriptions=subs[i],
                msgid=message_id(r.settings),
            )
        )
    render_all.seconds = time.perf_counter() - start  # type: ignore[attr-defined]
    return out


async def ours(r: Resources, event: dict[str, Any], n: int) -> tuple[float, float, list[bytes]]:
    """msgs/s end to end, and µs per message for render + MIME alone."""
    sample = render_all(r, event, 2000)
    render_us = render_all.seconds / 2000 * 1e6  # type: ignore[attr-defined]
    sender = sender_address(r.settings)
    per = n // CONNECTIONS

    async def one_connection(offset: int) -> None:
        # As the send job: each message rendered before the previous one goes, so its envelope
        # travels with that one's content (Connection.send's `then`).
        renderer = AlertRenderer(r.mail, event)
        async with r.mailer.connect() as conn:
            ahead = None
            for i in range(offset, offset + per):
                if i % 100 == 0:
                    renderer = AlertRenderer(r.mail, event)
                to = f"user{i}@example.org"
                data = ahead or renderer.render_bytes(
                    subscriber_id=i,
                    email=to,
                    subscriptions=[subscription(i)],
                    msgid=message_id(r.settings),
                    stuffed=True,
                )
                last = i + 1 == offset + per
                then = None if last else f"user{i + 1}@example.org"
                ahead = None
                if then is not None:
                    ahead = renderer.render_bytes(
                        subscriber_id=i + 1,
                        email=then,
                        subscriptions=[subscription(i + 1)],
                        msgid=message_id(r.settings),
                        stuffed=True,
                    )
                await conn.send(sender, to, data, then=then)

    start = time.perf_counter()
    await asyncio.gather(*(one_connection(k * per) for k in range(CONNECTIONS)))
    return per * CONNECTIONS / (time.perf_counter() - start), render_us, sample


def rfc_valid(messages: list[bytes]) -> bool:
    for data in messages:
        if max(len(line) for line in data.split(b"\r\n")) > 998:
            return False
        msg = email.message_from_bytes(data, policy=email.policy.default)
        if msg.defects or msg.get_body(("plain",)) is None or msg.get_body(("html",)) is None:
            return False
    return True


async def run(quick: bool) -> list[Result]:
    n = 2000 if quick else 20_000
    event = new_study_event()
    results_ours, results_naive, results_source, render_us = [], [], [], []
    size = 0
    valid = True
    with sink() as s:
        settings = Settings(
            env="dev",
            smtp_url=s.url,
            public_url="https://notify.example.org",
            secret_keys=["b" * 40],
            event_secrets=["c" * 40],
            admin_token="d" * 40,
        )
        r = resources(settings)
        for _ in range(3):
            rate, us, sample = await ours(r, event, n)
            results_ours.append(rate)
            render_us.append(us)
            valid = valid and rfc_valid(sample[:500])
            size = len(sample[0])
            results_naive.append(await naive_send_rate(s.port, max(500, n // 10), size))
            results_source.append(smtp_source_rate(s.port, n, size))
    ours_rate, naive, source = median(results_ours), median(results_naive), median(results_source)
    us = median(render_us)
    return [
        Result(
            "send_path",
            f"msgs/s ({n:,}, {size / 1024:.1f} KB)",
            ours_rate,
            naive,
            "naive EmailMessage + aiosmtplib",
            ">= 5x naive, render+MIME <= 150 us, RFC-valid",
            ours_rate >= 5 * naive and us <= 150 and valid,
            {"render_mime_us": round(us, 1), "rfc_valid": valid},
        ),
        Result(
            "send_path",
            "msgs/s vs the machine",
            ours_rate,
            source,
            "smtp-source -s 8 (C)",
            "(context)",
            True,
            {},
        ),
    ]
