"""The baselines each benchmark measures in the same run: what the machine or a naive path does."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage

import aiosmtplib
import asyncpg
from redis.asyncio import Redis

BODY_LINE = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n"


def body_of(size: int) -> str:
    return (BODY_LINE * (size // len(BODY_LINE) + 1))[:size]


async def naive_send_rate(port: int, messages: int, size: int) -> float:
    """EmailMessage per recipient + aiosmtplib over one connection: what a first version does."""
    text = body_of(size)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    start = time.perf_counter()
    for i in range(messages):
        msg = EmailMessage()
        msg["From"] = "Trial alerts <alerts@example.org>"
        msg["To"] = f"user{i}@example.org"
        msg["Subject"] = "Update on a study you follow"
        msg.set_content(text)
        msg.add_alternative(f"<html><body><pre>{text}</pre></body></html>", subtype="html")
        await client.send_message(msg)
    elapsed = time.perf_counter() - start
    await client.quit()
    return messages / elapsed


async def raw_keyset_rate(
    dsn: str, match_key: str, page: int = 1000
) -> tuple[float, int, float, float]:
    """A hand-written asyncpg keyset loop over the same partial index: rows/s, rows, first and
    last page seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        cursor, rows, times = 0, 0, []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            batch = await conn.fetch(
                "SELECT subscriber_id FROM subscriptions WHERE match_key = $1 "
                "AND status = 'confirmed' AND paused = false AND subscriber_id > $2 "
                "ORDER BY subscriber_id LIMIT $3",
                match_key,
                cursor,
                page,
            )
            times.append(time.perf_counter() - t0)
            if not batch:
                break
            rows += len(batch)
            cursor = batch[-1][0]
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    return rows / elapsed, rows, times[0], times[-2] if len(times) > 1 else times[-1]


async def raw_redis_rate(url: str, recipients: int, chunk: int = 1000) -> tuple[float, float]:
    """Pipelined RPUSH of recipient ids: ids/s and bytes of Redis memory per id at peak."""
    redis = Redis.from_url(url)
    try:
        await redis.flushdb()
        base = int((await redis.info("memory"))["used_memory"])
        start = time.perf_counter()
        async with redis.pipeline(transaction=False) as pipe:
            for first in range(0, recipients, chunk):
                pipe.rpush("bench:recipients", *range(first, min(recipients, first + chunk)))
                if (first // chunk) % 50 == 49:
                    await pipe.execute()
            await pipe.execute()
        elapsed = time.perf_counter() - start
        peak = int((await redis.info("memory"))["used_memory"]) - base
        await redis.flushdb()
    finally:
        await redis.aclose()
    return recipients / elapsed, peak / recipients


NOOP_APP = """
import sys
from aiohttp import web
async def noop(request):
    await request.read()
    return web.json_response({"status": "pending"}, status=202)
app = web.Application()
app.router.add_post("/v1/subscriptions", noop)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def sleep_until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not reached")


async def wait_port(port: int, timeout: float = 10.0) -> None:  # polls
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")
