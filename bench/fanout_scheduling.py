"""fanout_scheduling: the fan-out job turns one event into durable slices (one PostgreSQL row per
send batch) and their send jobs for every matching subscriber, with no sender consuming them;
baseline: raw pipelined Redis writes."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from bench.baselines import raw_redis_rate
from bench.common import REDIS_URL, Result, asyncpg_dsn, fresh_database, median, queue_name
from bench.seed import migrate, seed
from notifier.core.events import ingest, parse_events
from notifier.jobs.fanout import fanout_event
from notifier.resources import open_resources
from notifier.settings import Settings

KEY = "cond:neuroendocrine tumors"


def event(n: int) -> dict[str, Any]:
    return {
        "event_id": f"bench-scheduling-{n}-{time.time_ns()}",
        "nct_id": "NCT05844332",
        "change_kind": "new_study",
        "occurred_on": "2023-06-13",
        "study": {
            "url": "https://clinicaltrials.gov/study/NCT05844332",
            "brief_title": "LUTATHERA post-marketing survey",
            "overall_status": "RECRUITING",
            "conditions": ["Neuroendocrine Tumors"],
        },
        "changes": [],
    }


async def ours(settings: Settings, n: int) -> tuple[float, float, int]:
    async with open_resources(settings) as r:
        await r.redis.flushdb()
        async with r.engine.begin() as conn:
            await conn.exec_driver_sql("TRUNCATE deliveries, events CASCADE")
        stored = await ingest(r, parse_events(event(n)), "bench")
        await r.redis.flushdb()  # drop the fan-out job itself: we call the job directly
        redis = Redis.from_url(settings.redis_url)
        base = int((await redis.info("memory"))["used_memory"])
        start = time.perf_counter()
        result = await fanout_event({"resources": r}, stored.new_pks[0])
        elapsed = time.perf_counter() - start
        peak = int((await redis.info("memory"))["used_memory"]) - base
        jobs = await r.redis.zcard(settings.queue_name)
        await redis.flushdb()
        await redis.aclose()
        recipients = int(result["recipients"])
    return recipients / elapsed, peak / recipients, jobs


async def run(quick: bool) -> list[Result]:
    total, matching = (40_000, 20_000) if quick else (2_000_000, 1_000_000)
    url = await fresh_database("notifier_bench_sched")
    migrate(url)
    await seed(asyncpg_dsn(url), total=total, matching=matching, match_key=KEY)
    settings = Settings(
        env="dev",
        database_url=url,
        redis_url=REDIS_URL,
        secret_keys=["b" * 40],
        event_secrets=["c" * 40],
        admin_token="d" * 40,
        queue_name=queue_name("sched"),
        send_batch_size=500,
    )
    our_runs, bytes_runs, base_runs, base_bytes = [], [], [], []
    jobs = 0
    for i in range(3):
        rate, per, jobs = await ours(settings, i)
        our_runs.append(rate)
        bytes_runs.append(per)
        b_rate, b_per = await raw_redis_rate(REDIS_URL, matching)
        base_runs.append(b_rate)
        base_bytes.append(b_per)
    rate, base, per = median(our_runs), median(base_runs), max(bytes_runs)
    return [
        Result(
            "fanout_scheduling",
            f"recipients/s ({matching:,})",
            rate,
            base,
            "raw pipelined Redis RPUSH",
            ">= 30% of baseline, <= 50 B Redis/recipient",
            rate >= 0.3 * base and per <= 50,
            {
                "redis_bytes_per_recipient": round(per, 1),
                "baseline_bytes_per_recipient": round(median(base_bytes), 1),
                "send_jobs": jobs,
                "note": "ours walks the matching subscribers in PostgreSQL and commits one "
                "slice row per send batch before its job exists (the send jobs write the "
                "delivery rows); the baseline writes ids to Redis only",
            },
        )
    ]
