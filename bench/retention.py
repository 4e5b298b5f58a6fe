"""retention: PostgreSQL bytes after 90 simulated days of a 1M-subscriber deployment, with
retention on (the defaults: NOTIFIER_DELIVERY_RETENTION_DAYS=30, payloads 90 days) against off
(0: keep forever), in the same run.

The deployment (docs/PERFORMANCE.md's scale notes): a day of ClinicalTrials.gov brings a few
thousand changed records, so 3,000 events a day, 100 of them new studies. A new study reaches
1% of the 1M subscribers through their condition subscriptions (10,000 mails), any other event
the ~20 who follow that study: 1.06M delivery rows a day. Every event is stored with a real
payload, fanned out (a slice row per 500 recipients) and mailed (rows `sent`, with a
Message-ID), as the service writes them; rows come from generate_series, not the send path.

Scaled down: SCALE of the events each day with the same audiences (10,000 subscribers stand in
for the 1M, who would only add the same constant subscriber tables to both runs), so every
growing table scales by SCALE and the figures are divided by it. Each simulated day ends with
the real retention job (jobs.retention.run_retention) at that day's time: it rolls a partition
a day and drops those past retention; then a VACUUM of the other tables stands in for
autovacuum. Sizes are pg_total_relation_size (heap, indexes, TOAST) after a final VACUUM.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.common import REDIS_URL, ROOT, Result, asyncpg_dsn, fresh_database, queue_name
from bench.seed import migrate
from notifier.jobs.retention import run_retention
from notifier.resources import open_resources
from notifier.settings import Settings

DAYS = 90
EVENTS_A_DAY = 3000
NEW_STUDIES_A_DAY = 100
NEW_STUDY_AUDIENCE = 10_000  # 1% of 1M
STUDY_AUDIENCE = 20
SLICE = 500
START = datetime(2026, 1, 1, tzinfo=UTC)
TABLES = ("deliveries", "event_delivery_counts", "events", "fanout_slices")
GB = 1e9


def payloads() -> list[str]:
    examples = json.loads((ROOT / "tests" / "data" / "events_examples.json").read_text())
    return [json.dumps(e) for e in examples]


async def _day(conn: asyncpg.Connection, day: int, scale: float, made: dict[str, float]) -> None:
    """One day's events (SCALE of them, carried over as fractions) with their rows."""
    start = START + timedelta(days=day)
    bodies = payloads()
    for kind, per_day, audience in (
        ("new_study", NEW_STUDIES_A_DAY, NEW_STUDY_AUDIENCE),
        ("status_changed", EVENTS_A_DAY - NEW_STUDIES_A_DAY, STUDY_AUDIENCE),
    ):
        made[kind] += per_day * scale
        count = int(made[kind])
        made[kind] -= count
        for i in range(count):
            at = start + timedelta(minutes=10 + i)
            pk = await conn.fetchval(
                "INSERT INTO events (event_id, nct_id, change_kind, payload, received_at,"
                " duplicates, status, fanout_cursor, matched, fanned_out_at)"
                " VALUES ($1, 'NCT05879978', $2, $3::jsonb, $4, 0, 'fanned_out', $5::int,"
                " $5::int, $6)"
                " RETURNING id",
                f"{kind}-{day}-{i}",
                kind,
                bodies[i % len(bodies)],
                at,
                audience,
                at + timedelta(minutes=5),
            )
            await conn.execute(
                "INSERT INTO fanout_slices (event_pk, after_id, last_id, size, status, queued_at)"
                " SELECT $1, s - $3::int, s, $3::int, 'done', $2"
                " FROM generate_series($3::int, $4::int + $3::int - 1, $3::int) AS s",
                pk,
                at,
                SLICE,
                audience,
            )
            # Who follows a study: a different stretch of subscribers each time.
            first = 1 + (pk * 7919) % (NEW_STUDY_AUDIENCE - audience + 1)
            await conn.execute(
                "INSERT INTO deliveries (event_pk, subscriber_id, status, attempts,"
                " next_attempt_at, created_at, sent_at, message_id)"
                " SELECT $1, s, 'sent', 1, $2, $2, $2,"
                " '<' || md5(random()::text) || '@notify.example.org>'"
                " FROM generate_series($3::bigint, $3::bigint + $4::int - 1) AS s",
                pk,
                at + timedelta(minutes=1),
                first,
                audience,
            )


async def _sizes(conn: asyncpg.Connection) -> dict[str, int]:
    """Each table with its indexes and TOAST (deliveries: all its partitions)."""
    sizes = {}
    for table in TABLES:
        sizes[table] = int(
            await conn.fetchval(
                "SELECT pg_total_relation_size($1::regclass)"
                " + coalesce((SELECT sum(pg_total_relation_size(relid))"
                " FROM pg_partition_tree($1::regclass) WHERE level > 0), 0)",
                table,
            )
        )
    return sizes


async def simulate(scale: float, *, retention: bool) -> tuple[dict[str, int], int]:
    """Table bytes after DAYS days (and delivery rows stored), at `scale`."""
    url = await fresh_database("notifier_bench_retention")
    migrate(url)
    days = 30 if retention else 0
    settings = Settings(
        database_url=url,
        redis_url=REDIS_URL,
        queue_name=queue_name("retention"),
        delivery_retention_days=days,
        event_payload_retention_days=90 if retention else 0,
        study_version_retention_days=0,
        secret_keys=["bench-retention-" + "k" * 32],  # read at start-up, never used here
    )
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(
            "INSERT INTO subscribers (email, email_hash, timezone, created_at)"
            " SELECT 'user' || i || '@example.org', md5(i::text), 'UTC', $1"
            " FROM generate_series(1, $2) AS i",
            START,
            NEW_STUDY_AUDIENCE,
        )
        made = {"new_study": 0.0, "status_changed": 0.0}
        async with open_resources(settings) as r:
            for day in range(DAYS):
                await _day(conn, day, scale, made)
                await run_retention(r, START + timedelta(days=day + 1, hours=1))
                # What autovacuum does (it is off on the bench machine): space freed by the
                # day's updates and deletes is reused by the next day's rows, in both runs.
                await conn.execute("VACUUM events, fanout_slices, event_delivery_counts")
        await conn.execute("VACUUM ANALYZE")
        rows = int(await conn.fetchval("SELECT count(*) FROM deliveries"))
        return await _sizes(conn), rows
    finally:
        await conn.close()


async def run(quick: bool) -> list[Result]:
    scale = 1 / 200 if quick else 1 / 50
    on, rows_on = await simulate(scale, retention=True)
    off, rows_off = await simulate(scale, retention=False)
    on_gb, off_gb = sum(on.values()) / scale / GB, sum(off.values()) / scale / GB
    per_row = off["deliveries"] / max(1, rows_off)
    extra: dict[str, object] = {
        "scale": f"1/{round(1 / scale)}",
        "bytes_a_delivery_row": round(per_row),
        "delivery_rows_on_M": round(rows_on / scale / 1e6, 1),
        "delivery_rows_off_M": round(rows_off / scale / 1e6, 1),
    }
    for table in TABLES:
        extra[f"{table}_GB"] = f"{on[table] / scale / GB:.2f} vs {off[table] / scale / GB:.2f}"
    ratio = on_gb / off_gb
    return [
        Result(
            "retention",
            f"GB after {DAYS} days, 1M subscribers",
            on_gb,
            off_gb,
            "retention off (keep forever)",
            "on <= 0.5 x off",
            ratio <= 0.5,
            extra,
        )
    ]
