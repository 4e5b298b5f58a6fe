"""rate_limit: one event to N subscribers at a configured NOTIFIER_SEND_RATE while the relay
answers 454 to 1% of messages and 421 (closing) to 0.5% of connections: the achieved rate, the
busiest 1-second window, delivery and duplicates. The baseline is the configured rate itself."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.common import Result, asyncpg_dsn, free_port, fresh_database, median, queue_name, service
from bench.fanout_e2e import EVENT_SECRET, KEY, env_for, the_event
from bench.seed import migrate, seed
from notifier.pipeline import post_events

RATE = 100.0


class FlakyRelay:
    """A relay that refuses a share of messages (454) and drops a share of sessions (421)."""

    def __init__(self, message_fail: float, session_fail: float) -> None:
        self.message_fail = message_fail
        self.session_fail = session_fail
        self.arrivals: list[tuple[float, str]] = []
        self.rng = random.Random(7)  # fault injection, not security

    async def handle_MAIL(  # aiosmtpd hook
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rng.random() < self.session_fail:
            if server.transport is not None:
                server.transport.write(b"421 4.7.0 closing, try later\r\n")
                server.transport.close()
            return "421 4.7.0 closing"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(  # aiosmtpd hook
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rng.random() < self.message_fail:
            return "454 4.7.1 temporary failure, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd hook
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        now = time.monotonic()
        for rcpt in envelope.rcpt_tos:
            self.arrivals.append((now, rcpt))
        return "250 2.0.0 OK"


def figures(arrivals: list[tuple[float, str]]) -> dict[str, float]:
    times = sorted(t for t, _ in arrivals)
    counts = Counter(r for _, r in arrivals)
    # Steady state: the arrivals in the whole seconds from the first one up to the 95th
    # percentile (the retry tail of the last refused messages is not the rate the limiter
    # keeps). Whole seconds, because a per-second limit lets each second's quota arrive in a
    # burst: a span cut inside a burst would overstate the rate.
    seconds = max(1, int(times[int(len(times) * 0.95)] - times[0]))
    achieved = sum(1 for t in times if t < times[0] + seconds) / seconds
    overall = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    busiest, j = 0, 0
    for i, t in enumerate(times):  # sliding 1-second windows
        while times[j] < t - 1.0:
            j += 1
        busiest = max(busiest, i - j + 1)
    return {
        "achieved": achieved,
        "overall": overall,
        "busiest": busiest,
        "delivered": len(counts),
        "duplicates": sum(n - 1 for n in counts.values()),
    }


async def runs_of(url: str, messages: int, runs: int) -> list[dict[str, float]]:
    """Web + 2 workers started once; `runs` events one after another, each to every subscriber."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    await conn.execute("TRUNCATE deliveries, events CASCADE")
    await conn.close()
    relay = FlakyRelay(0.01, 0.005)
    smtp_port = free_port()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(relay, hostname="relay.bench"), "127.0.0.1", smtp_port
    )
    env = {
        **env_for(url, f"smtp://127.0.0.1:{smtp_port}"),
        "NOTIFIER_SEND_RATE": str(RATE),
        "NOTIFIER_RETRY_LADDER": "0.5,1,2",
        "NOTIFIER_QUEUE_NAME": queue_name("rate"),
    }
    measured = []
    try:
        async with service(env, workers=2) as svc:
            for run in range(runs):
                await asyncio.sleep(1.1)  # the previous run's last second leaves the window
                relay.arrivals = []
                await post_events(
                    f"http://127.0.0.1:{svc.port}/v1/events", [the_event(run)], secret=EVENT_SECRET
                )
                deadline = time.monotonic() + messages / RATE * 2 + 60
                while time.monotonic() < deadline:
                    if len({r for _, r in relay.arrivals}) >= messages:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # a duplicate would arrive now
                measured.append(figures(relay.arrivals))
    finally:
        server.close()
    return measured


async def run(quick: bool) -> list[Result]:
    messages = 400 if quick else 5000
    url = await fresh_database("notifier_bench_rate")
    migrate(url)
    await seed(asyncpg_dsn(url), total=messages * 2, matching=messages, match_key=KEY)
    runs = await runs_of(url, messages, 3)
    achieved = median([r["achieved"] for r in runs])
    busiest = max(r["busiest"] for r in runs)
    delivered = min(r["delivered"] for r in runs)
    duplicates = max(r["duplicates"] for r in runs)
    ok = (
        abs(achieved - RATE) <= 0.05 * RATE
        and busiest <= 1.1 * RATE
        and delivered == messages
        and duplicates == 0
    )
    return [
        Result(
            "rate_limit",
            f"msgs/s at NOTIFIER_SEND_RATE={RATE:g} ({messages:,})",
            achieved,
            RATE,
            "configured rate",
            "within ±5%, no 1 s window > 110%, all delivered, 0 duplicates",
            ok,
            {
                "overall_incl_retry_tail": round(median([r["overall"] for r in runs]), 1),
                "busiest_1s_window": busiest,
                "delivered": f"{delivered}/{messages}",
                "duplicates": duplicates,
                "faults": "454 to 1% of messages, 421 to 0.5% of sessions",
                "workers": 2,
            },
        )
    ]
