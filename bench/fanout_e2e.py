"""fanout_e2e: one new_study event through the public path — POST /v1/events -> arq -> matching
-> render -> SMTP — to Postfix's smtp-sink, with 1 and 2 worker processes; baseline: smtp-source
with same-size messages to the same sink."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import (
    REDIS_URL,
    STUDIES,
    Result,
    Sink,
    asyncpg_dsn,
    fresh_database,
    median,
    peak_rss_mb,
    queue_name,
    service,
    sink,
    smtp_source_rate,
)
from bench.seed import migrate, seed
from notifier.ops.sample_events import build_event
from notifier.pipeline import post_events

KEY = "cond:neuroendocrine tumors"
EVENT_SECRET = "e" * 40


def the_event(run: int) -> dict[str, Any]:
    record = json.loads((STUDIES / "NCT05844332.json").read_text())  # Neuroendocrine Tumors
    event = build_event(record, "new_study")
    event["event_id"] = f"bench-e2e-{run}-{time.time_ns()}"
    return event


def env_for(url: str, smtp_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "NOTIFIER_ENV": "production",
        "NOTIFIER_DATABASE_URL": url,
        "NOTIFIER_REDIS_URL": REDIS_URL,
        "NOTIFIER_SMTP_URL": smtp_url,
        "NOTIFIER_SECRET_KEYS": "s" * 40,
        "NOTIFIER_EVENT_SECRETS": EVENT_SECRET,
        "NOTIFIER_ADMIN_TOKEN": "a" * 40,
        "NOTIFIER_QUEUE_NAME": queue_name("e2e"),
        "NOTIFIER_WORKER_METRICS_BIND": "",
        "NOTIFIER_METRICS_BIND": "",
        "NOTIFIER_LOG_LEVEL": "WARNING",
        "NOTIFIER_PUBLIC_URL": "https://notify.example.org",
    }


async def runs_of(
    url: str, s: Sink, workers: int, audience: int, runs: int
) -> list[dict[str, float]]:
    """Start web + `workers` worker processes once, then post `runs` events one after another,
    each timed from the POST until the sink has counted the whole audience."""
    dsn = asyncpg_dsn(url)
    conn = await asyncpg.connect(dsn)
    await conn.execute("TRUNCATE deliveries, events CASCADE")
    await conn.close()
    env = env_for(url, s.url)
    measured: list[dict[str, float]] = []
    async with service(env, workers) as svc:
        for run in range(runs):
            before = s.received()
            start = time.perf_counter()
            await post_events(
                f"http://127.0.0.1:{svc.port}/v1/events", [the_event(run)], secret=EVENT_SECRET
            )
            first = None
            deadline = start + 900
            got = 0
            while time.perf_counter() < deadline:
                got = s.received() - before
                if first is None and got >= 1:
                    first = time.perf_counter() - start
                if got >= audience:
                    break
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
            if got < audience:
                tail = svc.log_tail()
                raise RuntimeError(f"only {got} of {audience} mails arrived; log tail:\n{tail}")
            measured.append(
                {"rate": audience / elapsed, "first": first or elapsed, "seconds": elapsed}
            )
        rss = max(peak_rss_mb(p.pid) for p in svc.workers)
    for m in measured:
        m["rss"] = rss
    return measured


async def run(quick: bool) -> list[Result]:
    total, audience = (6_000, 3_000) if quick else (200_000, 100_000)
    sizes = [] if quick else [audience // 10, audience // 3]  # the chart's smaller audiences
    url = await fresh_database("notifier_bench_e2e")
    migrate(url)
    results: list[Result] = []
    points: dict[str, list[tuple[int, float]]] = {"1": [], "2": []}
    with sink() as s:
        size = 7000
        base = median(
            [smtp_source_rate(s.port, 10_000 if quick else 20_000, size) for _ in range(3)]
        )
        # One run per smaller audience for the chart; the headline size gets the median of 3.
        for n in sizes:
            await seed(asyncpg_dsn(url), total=n * 2, matching=n, match_key=KEY)
            for workers in ("1", "2"):
                (r,) = await runs_of(url, s, int(workers), n, 1)
                points[workers].append((n, r["rate"]))
        await seed(asyncpg_dsn(url), total=total, matching=audience, match_key=KEY)
        for workers, target in ((1, 0.20), (2, 0.35)):
            runs = await runs_of(url, s, workers, audience, 3)
            rate = median([r["rate"] for r in runs])
            first = median([r["first"] for r in runs])
            rss = max(r["rss"] for r in runs)
            points[str(workers)].append((audience, rate))
            ok = rate >= target * base and first <= 1.0 and rss <= 150
            results.append(
                Result(
                    f"fanout_e2e/{workers}w",
                    f"mails/s ({audience:,} of {total:,})",
                    rate,
                    base,
                    "smtp-source -s 8, same size",
                    f">= {target:.0%}, first mail <= 1 s, RSS <= 150 MB",
                    ok,
                    {
                        "first_mail_s": round(first, 2),
                        "worker_rss_mb": round(rss, 1),
                        "seconds": round(median([r["seconds"] for r in runs]), 1),
                    },
                )
            )
    mode = "quick" if quick else "full"
    series = Path(__file__).parent / "results" / f"fanout-series-{mode}.json"
    series.parent.mkdir(exist_ok=True)
    series.write_text(
        json.dumps(
            {"mode": mode, "when": time.strftime("%Y-%m-%d"), "baseline": base, "points": points}
        )
    )
    from bench.chart import draw

    if not quick:
        chart = draw(series)
        results[-1].extra["chart"] = str(chart.relative_to(Path(__file__).parent.parent))
    return results
