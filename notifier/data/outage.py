"""When PostgreSQL was last found unreachable, by this process or by any worker sharing Redis.

The sweep reads it before it takes claimed rows: while the database was away no batch could
renew its claim, and a live one lands its outcomes within a second of the database's return.
"""

from __future__ import annotations

import time
from contextlib import suppress

from redis.asyncio import Redis
from redis.exceptions import RedisError


class DatabaseOutage:
    """One per process (held by Resources): what this process saw, and a Redis key for what
    the other workers saw, kept for `window` seconds (NOTIFIER_SWEEP_STALE_AFTER)."""

    def __init__(self, redis: Redis, key: str, window: float) -> None:
        self.redis = redis
        self.key = key
        self.window = window
        self.seen_at = float("-inf")  # time.monotonic() of this process's last report

    async def note(self) -> None:
        """This process found PostgreSQL unreachable: every worker's sweep should know (Redis is
        usually up meanwhile), for `window` seconds after the last such report."""
        self.seen_at = time.monotonic()
        with suppress(RedisError, OSError):
            await self.redis.set(self.key, b"1", px=int(self.window * 1000))

    def seen_here_within(self, seconds: float) -> bool:
        return time.monotonic() - self.seen_at < seconds

    async def within_window(self) -> bool:
        """Whether any worker found PostgreSQL unreachable within `window` seconds."""
        if self.seen_here_within(self.window):
            return True
        with suppress(RedisError, OSError):
            return bool(await self.redis.exists(self.key))
        return False
