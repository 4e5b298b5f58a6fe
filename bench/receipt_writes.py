"""`python -m bench.receipt_writes [PER_WRITE]`: the CPU a receipt write costs a process.

20,000 receipts noted PER_WRITE (default 1) at a time, each group's landing awaited before the
next, through notifier's ReceiptBook against the local Redis (database 14); beside it, the same
number of bare round trips (one SET written on a plain asyncio protocol, its reply awaited):
what a write cannot cost less than on this machine. Not part of `python -m bench`: the
microbenchmark of docs/PERFORMANCE.md's step 14.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime

import uvloop
from redis.asyncio import Redis

from bench.common import REDIS_URL
from notifier.data.receipts import ReceiptBook

RECEIPTS = 20_000
SET = (
    b"*5\r\n$3\r\nSET\r\n$20\r\nbench:accepted:12345\r\n$40\r\n"
    b"1796557540.495783 1796557540.495783 <ab>\r\n$2\r\nEX\r\n$5\r\n86400\r\n"
)


class _Bare(asyncio.Protocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(data)


async def bare_round_trips(host: str, port: int, n: int) -> float:
    """CPU µs a round trip: one SET written, its reply awaited."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_Bare, host, port)
    started = time.process_time()
    for _ in range(n):
        protocol.reply = loop.create_future()
        transport.write(SET)
        await protocol.reply
    spent = time.process_time() - started
    transport.close()
    return spent * 1e6 / n


async def main(per_write: int) -> None:
    redis = Redis.from_url(f"{REDIS_URL.rsplit('/', 1)[0]}/14")
    book = ReceiptBook(redis, "bench:accepted", 300)
    now = datetime.now(UTC)
    started = time.process_time()
    noted = 0
    while noted < RECEIPTS:
        landing = None
        for _ in range(per_write):
            landing = book.note(noted, now, "<bench@example.org>")
            noted += 1
        await book.landed(landing)
    spent = time.process_time() - started
    await book.close()
    writes = RECEIPTS / per_write
    kwargs = redis.connection_pool.connection_kwargs
    bare = await bare_round_trips(kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379), 20_000)
    async for key in redis.scan_iter(match="bench:accepted:*", count=1000):
        await redis.delete(key)
    await redis.aclose()
    print(
        f"{per_write} receipt(s) a write: {spent * 1e6 / writes:.1f} µs of CPU a write,"
        f" {spent * 1e6 / RECEIPTS:.1f} a receipt; a bare round trip: {bare:.1f} µs"
    )


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
