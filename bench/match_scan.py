"""match_scan: stream every matching subscriber with the service's own query code, against a raw
asyncpg keyset loop over the same index, on the same data, in the same run."""

from __future__ import annotations

import gc
import time

from bench.baselines import raw_keyset_rate
from bench.common import Result, asyncpg_dsn, fresh_database, median, rss_mb
from bench.seed import migrate, seed
from notifier.core.matching import iter_matching, match_keys
from notifier.data.db import make_engine, make_sessionmaker

KEY = "cond:neuroendocrine tumors"
EVENT = {
    "change_kind": "new_study",
    "nct_id": "NCT05844332",
    "study": {"conditions": ["Neuroendocrine Tumors"], "condition_mesh": []},
}


async def ours(url: str, page: int) -> tuple[float, int, float, float, float]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    mk = match_keys(EVENT)
    async with engine.connect() as conn:  # warm the pool: time queries, not the handshake
        await conn.exec_driver_sql("SELECT 1")
    gc.collect()
    rss0 = rss_mb()
    rows, times = 0, []
    start = t0 = time.perf_counter()
    async for batch in iter_matching(sessions, mk, page):
        now = time.perf_counter()
        times.append(now - t0)
        rows += len(batch)
        t0 = time.perf_counter()
    elapsed = time.perf_counter() - start
    growth = rss_mb() - rss0
    await engine.dispose()
    last = times[-2] if len(times) > 1 else times[-1]
    return rows / elapsed, rows, times[0], last, growth


async def run(quick: bool) -> list[Result]:
    total, matching = (100_000, 50_000) if quick else (2_000_000, 1_000_000)
    url = await fresh_database("notifier_bench_match")
    migrate(url)
    await seed(asyncpg_dsn(url), total=total, matching=matching, match_key=KEY)
    page = 1000
    our_runs, base_runs, details = [], [], []
    for _ in range(3):
        b = await raw_keyset_rate(asyncpg_dsn(url), KEY, page)
        o = await ours(url, page)
        base_runs.append(b[0])
        our_runs.append(o[0])
        details.append(o)
        assert o[1] == matching == b[1], (o[1], b[1], matching)
    rate, base = median(our_runs), median(base_runs)
    worst_growth = max(d[4] for d in details)
    last_over_first = median([d[3] / d[2] for d in details])
    ok = rate >= 0.5 * base and last_over_first <= 2 and worst_growth <= 50
    return [
        Result(
            "match_scan",
            f"rows/s ({matching:,} of {total:,})",
            rate,
            base,
            "raw asyncpg keyset loop",
            ">= 50% of baseline, last page <= 2x first, RSS +<= 50 MB",
            ok,
            {
                "last_page_over_first": round(last_over_first, 2),
                "rss_growth_mb": round(worst_growth, 1),
            },
        )
    ]
