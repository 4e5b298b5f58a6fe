"""`python -m bench.cpu_split WORKERS AUDIENCE RUNS [--reuse]`: where a fan-out's CPU goes.

fanout_e2e's event (web + WORKERS worker processes, Postfix's smtp-sink), posted RUNS times to
AUDIENCE matching subscribers; for each run, the rate and the CPU each class of process spent a
mail (workers, web, PostgreSQL, smtp-sink, Redis, the rest), from /proc/<pid>/stat before and
after. `--reuse` keeps the database seeded by the previous call (seeding twice AUDIENCE
subscribers takes a while). Not part of `python -m bench`: a tool for the profiles in
docs/PERFORMANCE.md (which processes to look at, and how much a change moved each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import asyncpg

from bench.common import PG_ADMIN, asyncpg_dsn, fresh_database, service, sink
from bench.fanout_e2e import EVENT_SECRET, KEY, env_for, the_event
from bench.seed import migrate, seed
from notifier.pipeline import post_events

DATABASE = "notifier_bench_cpu_split"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_by_class(workers: set[int], web: int) -> dict[str, float]:
    """CPU seconds so far of every process on the machine, by class."""
    out: dict[str, float] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        pid = int(proc.name)
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / TICKS
        if pid in workers:
            kind = "workers"
        elif pid == web:
            kind = "web"
        elif name.startswith("postgres"):
            kind = "postgres"
        elif "smtp-sink" in name:
            kind = "smtp-sink"
        elif "redis" in name:
            kind = "redis"
        else:
            kind = "rest"
        out[kind] = out.get(kind, 0.0) + seconds
    return out


async def main(workers: int, audience: int, runs: int, reuse: bool) -> None:
    if reuse:
        url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        url = f"{url}/{DATABASE}"
    else:
        url = await fresh_database(DATABASE)
        migrate(url)
        await seed(asyncpg_dsn(url), total=audience * 2, matching=audience, match_key=KEY)
    with sink() as s:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        await conn.execute("TRUNCATE deliveries, events CASCADE")
        await conn.close()
        async with service(env_for(url, s.url), workers) as svc:
            pids = {p.pid for p in svc.workers}
            web = svc.procs[0].pid
            for run in range(runs):
                before, cpu = s.received(), cpu_by_class(pids, web)
                start = time.perf_counter()
                await post_events(
                    f"http://127.0.0.1:{svc.port}/v1/events",
                    [the_event(run)],
                    secret=EVENT_SECRET,
                )
                while s.received() - before < audience:
                    await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - start
                after = cpu_by_class(pids, web)
                split = {k: (after[k] - cpu.get(k, 0.0)) * 1e6 / audience for k in after}
                ranked = sorted(split.items(), key=lambda kv: -kv[1])
                print(
                    f"run {run}: {audience / elapsed:,.0f} mails/s in {elapsed:.1f} s;"
                    " CPU µs a mail: "
                    + ", ".join(f"{k} {v:.0f}" for k, v in ranked)
                    + f"; in all {sum(split.values()):.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workers", type=int)
    parser.add_argument("audience", type=int)
    parser.add_argument("runs", type=int)
    parser.add_argument("--reuse", action="store_true", help="the database of the last call")
    args = parser.parse_args()
    asyncio.run(main(args.workers, args.audience, args.runs, args.reuse))
