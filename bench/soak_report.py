"""The soak's accounting after the drain (mails expected vs received, from the database and the
sink's log) and its table, printed as markdown for docs/RELIABILITY.md, and the verdict."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from bench.soak import Soak

KEY = "cond:neuroendocrine tumors"


@dataclass
class Mails:
    lost_alerts: Counter[str] = field(default_factory=Counter)  # per event tag
    lost_sent: int = 0  # recorded as sent in the database, never received
    stuck: int = 0  # rows still pending, sending or held after the drain
    lost_confirmations: int = 0
    duplicated_alerts: int = 0
    duplicated_digests: int = 0

    @property
    def lost(self) -> int:
        return (
            sum(self.lost_alerts.values()) + self.lost_sent + self.stuck + (self.lost_confirmations)
        )

    @property
    def duplicated(self) -> int:
        return self.duplicated_alerts + self.duplicated_digests


async def account(soak: Soak) -> Mails:
    """Expected alerts: the seeded instant audience for every accepted event, plus each signed-up
    address confirmed before the event and never unsubscribed; every row the database says was
    sent must have arrived; every accepted signup got its confirmation."""
    conn = await asyncpg.connect(soak.dsn)
    try:
        audience = set(
            await conn.fetchval(
                "SELECT array_agg(s.email) FROM subscribers s JOIN subscriptions u"
                " ON u.subscriber_id = s.id WHERE u.match_key = $1 AND u.frequency = 'instant'",
                KEY,
            )
        )
        sent = {
            r[0]
            for r in await conn.fetch(
                "SELECT DISTINCT message_id FROM deliveries"
                " WHERE status = 'sent' AND message_id IS NOT NULL"
            )
        }
        stuck = await conn.fetchval(
            "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending', 'held')"
        )
    finally:
        await conn.close()
    mails = Mails(stuck=stuck)
    received_alerts = set(soak.pairs)
    for tag, accepted_at in soak.events.items():
        extra = {  # the study's own signups (not the hostile address, which follows others)
            a
            for a, t in soak.confirmed.items()
            if t < accepted_at and a in soak.accepted and a not in soak.unsubscribing
        }
        for address in audience | extra:
            if (address, str(tag)) not in received_alerts:
                mails.lost_alerts[str(tag)] += 1
    mails.lost_sent = len(sent - set(soak.received_ids))
    mails.lost_confirmations = len(set(soak.accepted) - soak.confirmation_mails)
    mails.duplicated_alerts = sum(c - 1 for c in soak.pairs.values())
    mails.duplicated_digests = len(soak.digest_ids - sent)
    return mails


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q else 0.0


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def rows(soak: Soak, mails: Mails) -> list[list[str]]:
    names = sorted({n for i in soak.intervals for n in i.sample.get("rss", {})})
    head = [
        "interval",
        "requests by status",
        "p50 ms",
        "p99 ms",
        "mails alert/digest/confirm",
        "dup",
        "lost",
        *(f"RSS {n} MB" for n in names),
        "Redis keys (no TTL)",
        "Redis MB",
        "DB MB",
        "faults",
    ]
    out = [head]
    span = soak.interval_s
    for k, interval in enumerate(soak.intervals):
        start, end = k * span, (k + 1) * span
        label = f"{start / 60:.1f}-{end / 60:.1f} min" if k < len(soak.intervals) - 1 else "drain"
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(interval.statuses.items()))
        lost = sum(
            n for tag, n in mails.lost_alerts.items() if start <= soak.events[int(tag)] < end
        )
        faults = ", ".join(w.fault for w in soak.windows if start <= w.start < end)
        sample: dict[str, Any] = interval.sample
        rss = sample.get("rss", {})
        out.append(
            [
                label,
                statuses or "-",
                f"{percentile(interval.latencies, 50) * 1000:.0f}",
                f"{percentile(interval.latencies, 99) * 1000:.0f}",
                "/".join(str(interval.mails[k]) for k in ("alert", "digest", "confirm")),
                str(interval.duplicated),
                str(lost),
                *(_mb(rss.get(n)) for n in names),
                f"{sample.get('redis_keys', '-')} ({sample.get('redis_persistent', '-')})",
                _mb(sample.get("redis_mb")),
                _mb(sample.get("db_mb")),
                faults or "-",
            ]
        )
    return out


def markdown(table: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [fmt(table[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(fmt, table[1:])]
