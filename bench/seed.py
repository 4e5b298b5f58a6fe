"""Bulk-load confirmed subscribers with COPY (the service's own code is what bench measures)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import asyncpg

from notifier.data.migrate import upgrade


def migrate(url: str) -> None:
    upgrade(url)


async def seed(
    dsn: str,
    *,
    total: int,
    matching: int,
    match_key: str = "cond:neuroendocrine tumors",
    other_key: str = "cond:melanoma",
    chunk: int = 50_000,
) -> None:
    """`total` subscribers with one confirmed condition subscription each; `matching` of them on
    `match_key` (spread evenly through the id range), the rest on `other_key`."""
    now = datetime.now(UTC)
    every = max(1, total // max(1, matching))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE subscribers, subscriptions, deliveries, events CASCADE")
        made = 0
        for start in range(1, total + 1, chunk):
            ids = range(start, min(total, start + chunk - 1) + 1)
            subscribers = [
                (
                    i,
                    f"user{i}@example.org",
                    hashlib.sha256(f"user{i}".encode()).hexdigest(),
                    "UTC",
                    None,
                    now,
                    None,
                    now,
                )
                for i in ids
            ]
            await conn.copy_records_to_table(
                "subscribers",
                records=subscribers,
                columns=[
                    "id",
                    "email",
                    "email_hash",
                    "timezone",
                    "confirm_nonce",
                    "first_confirmed_at",
                    "last_digest_at",
                    "created_at",
                ],
            )
            subscriptions = []
            for i in ids:
                hit = made < matching and (i - 1) % every == 0
                made += hit
                key = match_key if hit else other_key
                subscriptions.append(
                    (
                        i,
                        i,
                        "condition",
                        key,
                        key.removeprefix("cond:").title(),
                        None,
                        False,
                        "confirmed",
                        False,
                        "instant",
                        True,
                        now,
                        "127.0.0.1",
                        "bench",
                        None,
                        now,
                        "127.0.0.1",
                        "bench",
                        now,
                    )
                )
            await conn.copy_records_to_table(
                "subscriptions",
                records=subscriptions,
                columns=[
                    "id",
                    "subscriber_id",
                    "kind",
                    "match_key",
                    "label",
                    "mesh_id",
                    "broad",
                    "status",
                    "paused",
                    "frequency",
                    "discreet",
                    "requested_at",
                    "request_ip",
                    "request_user_agent",
                    "request_source",
                    "confirmed_at",
                    "confirm_ip",
                    "confirm_user_agent",
                    "updated_at",
                ],
            )
        for table in ("subscribers", "subscriptions"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {total})")
        await conn.execute("ANALYZE subscribers; ANALYZE subscriptions")
    finally:
        await conn.close()
