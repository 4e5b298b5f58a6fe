"""`python -m bench.soak [--minutes 20] [--hostile]`: web + 2 workers on a private PostgreSQL and
Redis under a steady mix of traffic, with a Redis restart, a PostgreSQL restart and a worker
SIGKILL on a schedule. Prints a table per interval; exits 1 naming each failed pass condition.

Pass: 0 mails lost; 0 5xx outside the outage windows (and no 500 anywhere); duplicates within
the documented bound per SIGKILL; RSS of each process alive since warm-up within +10% of its
size after warm-up; Redis keys flat (
keys with no expiry within warm-up + 5 at every sample; no key set to live longer than a day
(rate-limit windows grow with the distinct addresses seen and expire within a day: bounded by
their TTL, reported, not failed); arq's keys, 65 s after the drain (a result's lifetime),
within 1.25 x warm-up + 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from bench.common import asyncpg_dsn, rss_mb
from bench.fanout_e2e import the_event
from bench.seed import migrate, seed
from bench.soak_report import KEY, Mails, account, markdown, rows
from bench.soak_stack import PgCluster, SmtpSink, Stack, soak_env
from notifier.pipeline import encode, sign
from notifier.queue import Cron, deserialize, serialize
from tests.conftest import ADMIN_TOKEN, EVENT_SECRETS, SITE_ORIGIN
from tests.faults.harness import RedisServer
from tests.faults.harness import wait_ready as harness_wait_ready

NCT = "NCT05844332"  # the_event()'s study: KEY's audience and study:NCT… signups both match
SIGNUPS_PER_S = 2.0
ADMIN_READS_PER_S = 1.0
UNSUBSCRIBE_SHARE = 0.3  # of signed-up addresses, after their first alert
DIGEST_EVERY = 20  # one seeded subscriber in 20 takes a daily digest
SEND_BATCH, MAX_JOBS = 50, 4  # tests/faults/harness.service_env
DUPLICATES_PER_KILL = SEND_BATCH * MAX_JOBS  # docs/RELIABILITY.md, "The one possible duplicate"
RSS_GROWTH = 0.10
KEYS_FACTOR, KEYS_SLACK = 1.25, 200
PERSISTENT_SLACK = 5  # keys without expiry: the queue, a few markers
MAX_TTL = 90_000  # the longest window kept: a per-address daily allowance (limits adds ~2000 s)
RESULT_LIFETIME = 65  # s: arq keeps a job's result 60 s (notifier/worker.py)
HOSTILE = ("hostile", "slow client")  # requests left out of p50/p99
OUTAGE_GRACE = 5.0  # s after a fault's recovery still counted in its window
INTERVALS = 4


@dataclass
class Window:
    fault: str
    start: float
    end: float = float("inf")


@dataclass
class Interval:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    mails: Counter[str] = field(default_factory=Counter)
    duplicated: int = 0
    sample: dict[str, Any] = field(default_factory=dict)


@dataclass
class Soak:
    """What the run observed: requests, mails, the faults' windows, samples per interval."""

    minutes: float
    hostile: bool
    stack: Stack
    pg: PgCluster
    redis: RedisServer
    sink: SmtpSink
    dsn: str
    audience: int
    started: float = field(default_factory=time.monotonic)
    windows: list[Window] = field(default_factory=list)
    intervals: list[Interval] = field(default_factory=list)
    outside_5xx: list[tuple[float, str, int]] = field(default_factory=list)
    errors_500: int = 0
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    received_ids: Counter[str] = field(default_factory=Counter)
    digest_ids: set[str] = field(default_factory=set)
    confirm_tokens: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    unsubscribe_tokens: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    confirmed: dict[str, float] = field(default_factory=dict)
    unsubscribing: set[str] = field(default_factory=set)
    events: dict[int, float] = field(default_factory=dict)  # tag -> accepted at
    event_ids: dict[int, str] = field(default_factory=dict)
    signups: int = 0
    accepted: dict[str, float] = field(default_factory=dict)  # signups answered 202, when
    confirmation_mails: set[str] = field(default_factory=set)
    kills: int = 0
    duplicate_times: list[float] = field(default_factory=list)
    log_offset: int = 0
    stopping: bool = False

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def interval_s(self) -> float:
        return self.seconds / INTERVALS

    def now(self) -> float:
        return time.monotonic() - self.started

    def current(self) -> Interval:
        index = min(int(self.now() // self.interval_s), INTERVALS)  # the drain is the last
        while len(self.intervals) <= index:
            self.intervals.append(Interval())
        return self.intervals[index]

    def in_window(self, t: float) -> bool:
        return any(w.start <= t <= w.end + OUTAGE_GRACE for w in self.windows)

    def record(self, what: str, status: int | str, seconds: float) -> None:
        t = self.now()
        interval = self.current()
        interval.statuses[str(status)] += 1
        if what not in HOSTILE:  # a slow client takes the body timeout by design
            interval.latencies.append(seconds)
        if isinstance(status, int) and status >= 500:
            self.errors_500 += status == 500
            if not self.in_window(t):
                self.outside_5xx.append((t, what, status))

    # --- HTTP -----------------------------------------------------------------------------

    async def request(
        self, http: aiohttp.ClientSession, method: str, path: str, what: str, **kw: Any
    ) -> tuple[int | str, Any]:
        began = time.monotonic()
        try:
            async with http.request(method, self.stack.base_url + path, **kw) as resp:
                body = await resp.read()
                status: int | str = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, body = type(exc).__name__, b""
        self.record(what, status, time.monotonic() - began)
        return status, body

    # --- the mail log ---------------------------------------------------------------------

    def read_mail(self) -> None:
        with self.sink.log.open() as log:
            log.seek(self.log_offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.log_offset += len(complete.encode())
        interval = self.current()
        for line in complete.splitlines():
            rcpt, msgid, kind, token = line.split("\t")
            self.received_ids[msgid] += 1
            interval.mails[kind.partition(":")[0]] += 1
            if kind.startswith("alert:"):
                pair = (rcpt, kind.partition(":")[2])
                self.pairs[pair] += 1
                if self.pairs[pair] > 1:
                    interval.duplicated += 1
                    self.duplicate_times.append(self.now())
                soak_address = rcpt.endswith("@soak.example.net")
                fresh = soak_address and token != "-" and rcpt not in self.unsubscribing
                if fresh and random.random() < UNSUBSCRIBE_SHARE:
                    self.unsubscribing.add(rcpt)
                    self.unsubscribe_tokens.put_nowait((rcpt, token))
            elif kind == "digest":
                self.digest_ids.add(msgid)
            elif kind == "confirm":
                self.confirmation_mails.add(rcpt)
                self.confirm_tokens.put_nowait((rcpt, token))

    async def mail_reader(self) -> None:
        while True:
            self.read_mail()
            await asyncio.sleep(0.5)


# --- the load ---------------------------------------------------------------------------------


def client_headers() -> dict[str, str]:
    ip = f"198.51.{random.randint(0, 255)}.{random.randint(1, 254)}"
    return {
        "X-Forwarded-For": ip,
        "User-Agent": "Mozilla/5.0 (soak)",
        "Referer": f"{SITE_ORIGIN}/studies/{NCT}",
    }


async def paced(soak: Soak, per_second: float, step: Any) -> None:
    """Call `step` about per_second times a second until the load stops (never in a burst)."""
    async with aiohttp.ClientSession() as http:
        while not soak.stopping:
            began = time.monotonic()
            await step(http)
            await asyncio.sleep(max(0.0, 1 / per_second - (time.monotonic() - began)))


async def signups(soak: Soak) -> None:
    async def step(http: aiohttp.ClientSession) -> None:
        soak.signups += 1
        body = {"email": f"s{soak.signups}@soak.example.net", "study": NCT}
        status, _ = await soak.request(
            http, "POST", "/v1/subscriptions", "signup", json=body, headers=client_headers()
        )
        if status == 202:
            soak.accepted[body["email"]] = soak.now()

    await paced(soak, SIGNUPS_PER_S, step)


async def confirms(soak: Soak) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            address, token = await soak.confirm_tokens.get()
            for _ in range(30):  # a 503 during an outage: the person tries again
                status, _ = await soak.request(
                    http, "POST", f"/v1/confirm/{token}", "confirm", headers=client_headers()
                )
                if status == 200:
                    soak.confirmed.setdefault(address, soak.now())
                    break
                if isinstance(status, int) and status < 500:
                    break
                await asyncio.sleep(2)


async def unsubscribes(soak: Soak) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            _, token = await soak.unsubscribe_tokens.get()
            for _ in range(30):
                status, _ = await soak.request(
                    http,
                    "POST",
                    f"/v1/unsubscribe/{token}",
                    "unsubscribe",
                    data={"List-Unsubscribe": "One-Click"},
                )
                if not isinstance(status, str) and status < 500:
                    break
                await asyncio.sleep(2)


async def admin_reads(soak: Soak) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    paths = ["/v1/admin/suppressions", "/v1/conditions?q=neuroendocrine", "/readyz"]

    async def step(http: aiohttp.ClientSession) -> None:
        if soak.event_ids:
            paths.append(f"/v1/admin/events/{soak.event_ids[max(soak.event_ids)]}")
        path = random.choice(paths)
        await soak.request(http, "GET", path, "admin read", headers=auth)
        del paths[3:]

    await paced(soak, ADMIN_READS_PER_S, step)


async def events(soak: Soak, every: float) -> None:
    async with aiohttp.ClientSession() as http:
        tag = 0
        while not soak.stopping:
            tag += 1
            event = the_event(tag)
            event["study"]["brief_title"] += f" [soak {tag}]"
            body = encode([event])
            while not soak.stopping:
                headers = {
                    "Notifier-Signature": sign(body, EVENT_SECRETS[0]),
                    "Content-Type": "application/json",
                }
                status, _ = await soak.request(
                    http, "POST", "/v1/events", "event", data=body, headers=headers
                )
                if status == 202:
                    soak.events[tag] = soak.now()
                    soak.event_ids[tag] = event["event_id"]
                    break
                await asyncio.sleep(2)
            await asyncio.sleep(every)


async def digests_due(soak: Soak) -> None:
    """Once an interval: make every held item a day old (as if local midnight had passed) and
    run the worker's hourly digest tick, so digests fall due throughout the run."""
    while not soak.stopping:
        await asyncio.sleep(soak.interval_s / 2)
        with contextlib.suppress(OSError, asyncpg.PostgresError):  # restarting: next tick
            await tick_digests(soak)


async def tick_digests(soak: Soak) -> None:
    conn = await asyncpg.connect(soak.dsn)
    try:
        await conn.execute(
            "UPDATE deliveries SET created_at = created_at - interval '2 days'"
            " WHERE status = 'held' AND created_at > now() - interval '1 day'"
        )
    finally:
        await conn.close()
    async with redis_pool(soak) as pool:
        await pool.enqueue_job(Cron.DIGEST_TICK.value, _job_id=f"soak-tick-{uuid.uuid4().hex}")


@contextlib.asynccontextmanager
async def redis_pool(soak: Soak) -> AsyncIterator[ArqRedis]:
    """An arq client as the service's own: its queue, its JSON job format."""
    pool = await create_pool(
        RedisSettings.from_dsn(soak.redis.url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=soak.stack.env["NOTIFIER_QUEUE_NAME"],
    )
    try:
        yield pool
    finally:
        await pool.aclose()


# --- hostile traffic (--hostile): the hardening tests' inputs, at volume ------------------


async def hostile_bodies(soak: Soak) -> None:
    """1 MiB signups (413) and 8 MiB unsigned events (401), twice a second."""
    big, huge = b"x" * (1 << 20), b"x" * (8 << 20)

    async def step(http: aiohttp.ClientSession) -> None:
        headers = {**client_headers(), "Content-Type": "application/json"}
        await soak.request(http, "POST", "/v1/subscriptions", "hostile", data=big, headers=headers)
        await soak.request(http, "POST", "/v1/events", "hostile", data=huge, headers=headers)

    await paced(soak, 1.0, step)


async def slow_client(soak: Soak) -> None:
    """A client that announces a body and sends a byte a second (the server cuts it off)."""
    while not soak.stopping:
        began = time.monotonic()
        status: int | str = "closed"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", soak.stack.web_port)
            ip = client_headers()["X-Forwarded-For"].encode()  # past the per-IP limit
            writer.write(
                b"POST /v1/subscriptions HTTP/1.1\r\nHost: soak\r\nX-Forwarded-For: " + ip + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"
            )
            while not soak.stopping and not reader.at_eof():
                writer.write(b" ")
                await writer.drain()
                try:
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                except TimeoutError:
                    continue
                if line.startswith(b"HTTP/1.1 "):
                    status = int(line.split()[1])
                break
            writer.close()
        except (OSError, ValueError):
            pass
        if not soak.stopping:
            soak.record("slow client", status, time.monotonic() - began)


async def one_address(soak: Soak) -> None:
    """Thousands of subscriptions asked for one address (each to a different study)."""
    n = 0

    async def step(http: aiohttp.ClientSession) -> None:
        nonlocal n
        n += 1
        body = {"email": "many@soak.example.net", "study": f"NCT{90000000 + n:08d}"}
        await soak.request(
            http, "POST", "/v1/subscriptions", "hostile", json=body, headers=client_headers()
        )

    await paced(soak, 5.0, step)


def hostile(soak: Soak) -> list[Any]:
    return [hostile_bodies(soak), one_address(soak), *(slow_client(soak) for _ in range(50))]


# --- faults on a schedule ---------------------------------------------------------------


async def wait_ready(soak: Soak) -> None:
    await harness_wait_ready(soak.stack.base_url, within=120)


async def at(soak: Soak, fraction: float) -> None:
    await asyncio.sleep(max(0.0, fraction * soak.seconds - soak.now()))


async def mid_send(soak: Soak, within: float) -> None:
    """Wait until alerts are flowing (a fan-out in progress), so the kill lands mid-batch."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = soak.sink.log.stat().st_size
        await asyncio.sleep(0.3)
        if soak.sink.log.stat().st_size - before > 2000:
            return


async def faults(soak: Soak) -> None:
    """Each after warm-up (the first interval) and with recovery time before the next."""
    await at(soak, 0.35)
    window = Window("Redis restart", soak.now())
    soak.windows.append(window)
    await soak.redis.stop()
    await asyncio.sleep(2)
    await soak.redis.start()
    await wait_ready(soak)
    window.end = soak.now()

    await at(soak, 0.55)
    stale = float(soak.stack.env["NOTIFIER_SWEEP_STALE_AFTER"])
    window = Window("worker SIGKILL", soak.now())
    soak.windows.append(window)
    await mid_send(soak, within=soak.interval_s / 2 + 30)  # until the next fan-out at most
    await soak.stack.kill_worker(1)
    soak.kills += 1
    await soak.stack.start_numbered_worker(1)
    await asyncio.sleep(2 * stale)  # the sweep hands the dead worker's rows out again
    window.end = soak.now()

    await at(soak, 0.75)
    window = Window("PostgreSQL restart", soak.now())
    soak.windows.append(window)
    await asyncio.to_thread(soak.pg.stop, "immediate")  # a crash: no checkpoint, no goodbye
    await asyncio.sleep(3)
    await asyncio.to_thread(soak.pg.start)
    await wait_ready(soak)
    window.end = soak.now()


# --- samples, drain, accounting ------------------------------------------------------------


async def sample(soak: Soak) -> dict[str, Any]:
    """RSS per process, Redis keys and memory, database size (None where unreachable)."""
    out: dict[str, Any] = {"rss": {n: rss_mb(p) for n, p in soak.stack.pids().items()}}
    try:
        async with redis_pool(soak) as pool:
            out["redis_keys"] = await pool.dbsize()
            out["redis_mb"] = int((await pool.info("memory"))["used_memory"]) / 2**20
            kinds: Counter[str] = Counter()
            persistent: Counter[str] = Counter()
            out["max_ttl"] = 0
            async for key in pool.scan_iter(count=1000):
                kind = key_kind(key.decode())
                kinds[kind] += 1
                ttl = await pool.ttl(key)
                if ttl == -1:  # no expiry: only a leak makes these grow
                    persistent[kind] += 1
                out["max_ttl"] = max(out["max_ttl"], ttl)
            out["redis_persistent"] = sum(persistent.values())
            out["persistent_kinds"] = dict(persistent.most_common(5))
            out["key_kinds"] = dict(kinds)
    except (OSError, ConnectionError):
        out["redis_keys"] = out["redis_mb"] = out["redis_persistent"] = None
    try:
        conn = await asyncpg.connect(soak.dsn)
        try:
            out["db_mb"] = await conn.fetchval("SELECT pg_database_size(current_database())")
            out["db_mb"] /= 2**20
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError):
        out["db_mb"] = None
    return out


def key_kind(key: str) -> str:
    """A key's family: `arq:job`, `arq:result`, the queue, a rate-limit window..."""
    parts = key.split(":")
    return ":".join(p if not any(c.isdigit() for c in p) else "*" for p in parts[:3])


async def sampler(soak: Soak) -> None:
    for k in range(1, INTERVALS + 1):
        await at(soak, k / INTERVALS)
        soak.read_mail()
        while len(soak.intervals) < k:
            soak.intervals.append(Interval())
        soak.intervals[k - 1].sample = await sample(soak)


async def unfinished(soak: Soak) -> int:
    conn = await asyncpg.connect(soak.dsn)
    try:
        rows: int = await conn.fetchval(
            "SELECT (SELECT count(*) FROM events WHERE status IN ('received', 'fanning_out'))"
            " + (SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending', 'held'))"
        )
        return rows
    finally:
        await conn.close()


async def drain(soak: Soak, within: float) -> float:
    """After the load: make the last held items due (a digest job id is kept 60 s, so the tick
    repeats until none is held), then wait until nothing is open, every signup has its
    confirmation and mail has stopped for 6 s."""
    began = time.monotonic()
    quiet, last, ticked = 0, -1, 0.0
    while time.monotonic() - began < within:
        if time.monotonic() - ticked > 15:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await tick_digests(soak)
            ticked = time.monotonic()
        await asyncio.sleep(1)
        soak.read_mail()
        quiet = quiet + 1 if soak.log_offset == last else 0
        last = soak.log_offset
        unconfirmed = set(soak.accepted) - soak.confirmation_mails  # a job may still be queued
        if quiet >= 6 and not unconfirmed and await unfinished(soak) == 0:
            break
    return time.monotonic() - began


def duplicates_by_fault(soak: Soak) -> dict[str, int]:
    """Each duplicate received, charged to the last fault that began before it arrived."""
    out: Counter[str] = Counter()
    for t in soak.duplicate_times:
        before = [w.fault for w in soak.windows if w.start <= t]
        out[before[-1] if before else "none"] += 1
    return dict(out)


def arq_keys(sample: dict[str, Any]) -> int:
    """Queued jobs, results, in-progress and retry markers: they come and go with the load."""
    return sum(n for kind, n in sample.get("key_kinds", {}).items() if kind.startswith("arq:"))


def verdict(soak: Soak, mails: Mails) -> list[str]:
    """Every failed pass condition, as one line each."""
    failed = []
    if mails.lost:
        failed.append(
            f"lost {mails.lost} mail(s): alerts {sum(mails.lost_alerts.values())} "
            f"(per event {dict(mails.lost_alerts)}), sent but not received {mails.lost_sent}, "
            f"left pending/sending/held {mails.stuck}, confirmations {mails.lost_confirmations}"
        )
    if soak.outside_5xx:
        first = ", ".join(
            f"{what} {status} at {t:.0f} s" for t, what, status in soak.outside_5xx[:5]
        )
        failed.append(f"{len(soak.outside_5xx)} 5xx outside the outage windows: {first}")
    if soak.errors_500:
        failed.append(f"{soak.errors_500} answer(s) 500 (a dependency down must give 503)")
    bound = DUPLICATES_PER_KILL * soak.kills
    if mails.duplicated > bound:
        failed.append(f"{mails.duplicated} duplicates > {bound} ({soak.kills} SIGKILL)")
    warm = soak.intervals[0].sample
    end = soak.intervals[-1].sample
    for name, before in warm.get("rss", {}).items():
        after = end.get("rss", {}).get(name)
        restarted = any(w.fault == "worker SIGKILL" for w in soak.windows) and name == "worker2"
        if after is not None and not restarted and after > before * (1 + RSS_GROWTH):
            failed.append(f"RSS of {name} grew {before:.0f} -> {after:.0f} MB (> +10%)")
    keys, persistent = warm.get("redis_keys"), warm.get("redis_persistent")
    if keys is not None and persistent is not None:
        for k, interval in enumerate(soak.intervals[1:], 2):
            now = interval.sample.get("redis_persistent")
            if now is not None and now > persistent + PERSISTENT_SLACK:
                kinds = interval.sample.get("persistent_kinds")
                failed.append(
                    f"Redis keys without expiry grew: {persistent} after warm-up, {now} at "
                    f"sample {k} ({kinds})"
                )
        warm_jobs, end_jobs = arq_keys(warm), arq_keys(end)
        limit = warm_jobs * KEYS_FACTOR + KEYS_SLACK
        if end_jobs > limit:
            failed.append(
                f"arq keys after the drain {end_jobs} > {limit:.0f} (warm-up: {warm_jobs})"
            )
        longest = max(i.sample.get("max_ttl") or 0 for i in soak.intervals)
        if longest > MAX_TTL:
            failed.append(f"a Redis key lives {longest} s (> a day): it piles up")
    return failed


async def run(minutes: float, hostile_traffic: bool, audience: int, every: float | None) -> int:
    logs = Path(tempfile.mkdtemp(prefix="soak-"))
    pg = PgCluster()
    await asyncio.to_thread(pg.init)
    await asyncio.to_thread(pg.start)
    redis = RedisServer()
    await redis.start()
    sink = SmtpSink(logs / "mail.tsv")
    await sink.start()
    url = pg.url("postgres")
    await asyncio.to_thread(migrate, url)
    dsn = asyncpg_dsn(url)
    await seed(dsn, total=audience + audience // 5, matching=audience, match_key=KEY)
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        f"UPDATE subscriptions SET frequency = 'daily' WHERE id % {DIGEST_EVERY} = 0"
    )
    await conn.close()
    env = soak_env(url, redis, sink, f"soak-{uuid.uuid4().hex[:8]}")
    stack = Stack(env=env, logs=logs)
    soak = Soak(minutes, hostile_traffic, stack, pg, redis, sink, dsn, audience)
    print(f"soak: {minutes:g} min, audience {audience:,}, logs in {logs}", flush=True)
    try:
        await stack.start()
        soak.started = time.monotonic()
        every = every if every is not None else soak.interval_s / 2
        load = [
            signups(soak),
            confirms(soak),
            unsubscribes(soak),
            admin_reads(soak),
            events(soak, every),
            digests_due(soak),
            soak.mail_reader(),
            *(hostile(soak) if hostile_traffic else []),
        ]
        tasks = [asyncio.create_task(c) for c in load]
        await asyncio.gather(faults(soak), sampler(soak))
        soak.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        drained = await drain(soak, max(120.0, soak.seconds / 4))
        while len(soak.intervals) <= INTERVALS:
            soak.intervals.append(Interval())
        await asyncio.sleep(RESULT_LIFETIME)  # the last jobs' results expire: what stays, grew
        soak.intervals[INTERVALS].sample = await sample(soak)
        mails = await account(soak)
    finally:
        await stack.stop()
        await sink.stop()
        await redis.stop()
        await asyncio.to_thread(pg.destroy)
    table = rows(soak, mails)
    print("\n".join(markdown(table)))
    windows = "; ".join(f"{w.fault} {w.start:.0f}-{w.end:.0f} s" for w in soak.windows)
    print(
        f"\noutage windows: {windows} (+{OUTAGE_GRACE:g} s grace); drain {drained:.0f} s; "
        f"events {len(soak.events)} x {audience:,}; signups {len(soak.accepted)}, confirmed "
        f"{len(soak.confirmed)}, unsubscribed {len(soak.unsubscribing)}; duplicates "
        f"{mails.duplicated} (alerts {mails.duplicated_alerts}, digests "
        f"{mails.duplicated_digests}; bound {DUPLICATES_PER_KILL} per SIGKILL)"
    )
    print(f"Redis keys after warm-up: {soak.intervals[0].sample.get('key_kinds')}")
    print(f"Redis keys after the drain: {soak.intervals[-1].sample.get('key_kinds')}")
    for address in sorted(set(soak.accepted) - soak.confirmation_mails):
        print(f"no confirmation for {address}, accepted at {soak.accepted[address]:.1f} s")
    print(f"duplicates after each fault: {duplicates_by_fault(soak)}")
    failed = verdict(soak, mails)
    for line in failed:
        print(f"SOAK FAILED: {line}")
    if failed:
        print(f"the processes' logs and the mail log are in {logs}")
        return 1
    print("soak passed: 0 lost, no 5xx outside outages, RSS within +10%, Redis keys flat")
    shutil.rmtree(logs, ignore_errors=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--hostile", action="store_true", help="add the hardening tests' inputs")
    parser.add_argument(
        "--audience", type=int, default=None, help="subscribers per event (10,000; 2,000 < 10 min)"
    )
    parser.add_argument("--event-every", type=float, default=None, help="s between events")
    args = parser.parse_args()
    audience = args.audience or (10_000 if args.minutes >= 10 else 2_000)
    sys.exit(asyncio.run(run(args.minutes, args.hostile, audience, args.event_every)))


if __name__ == "__main__":
    main()
