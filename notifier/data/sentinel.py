"""The Redis master a Sentinel set names, as an arq pool that follows it through a failover.

redis-py asks the Sentinels where the master is only when it opens a connection, and two of its
habits turn a failover into an outage or a loss here:
- a connection retries the address it was given (with the worker's ride-out-a-restart retries,
  two minutes on a dead master) before asking the Sentinels again;
- connections already open stay on a demoted master that is still up. Sentinel reconfigures it
  only at its next check, 10 s after the switch (measured with redis 7.0): meanwhile it still
  takes writes, lost when it turns replica of the new master.
So each connection attempt asks the Sentinels, and a follower task asks every
MASTER_CHECK_INTERVAL and drops every connection when the master has moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from arq.connections import ArqRedis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("notifier.redis")

MASTER_CHECK_INTERVAL = 1.0  # seconds between questions to the Sentinels, per process


class OneAttemptPerAddress(SentinelManagedConnection):
    """A connection whose every attempt (the outer retry) asks the Sentinels for the address."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        retry, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]  # redis-py's
        finally:
            self.retry = retry


class OneAttemptPerAddressTLS(OneAttemptPerAddress, SSLConnection):
    pass


class SentinelArqRedis(ArqRedis):
    """The master's pool (master_for); also closes the clients of the Sentinels it asks."""

    sentinels: Sentinel
    master: str
    follower: asyncio.Task[None] | None = None

    def follow_master(self) -> None:
        """Start following the master (once; from a running event loop)."""
        if self.follower is None:
            self.follower = asyncio.create_task(self._follow(), name="notifier-redis-master")

    async def _follow(self) -> None:
        pool = cast(SentinelConnectionPool, self.connection_pool)
        while True:
            await asyncio.sleep(MASTER_CHECK_INTERVAL)
            try:
                address = await self.sentinels.discover_master(self.master)
            except (RedisError, OSError):
                continue  # no Sentinel answers, or none knows a master yet: ask again
            if pool.master_address is not None and address != pool.master_address:
                log.warning(
                    "Redis master %s moved from %s:%s to %s:%s (Sentinel): reconnecting",
                    self.master,
                    *pool.master_address,
                    *address,
                )
                pool.master_address = address
                try:
                    await pool.disconnect()  # in-flight commands fail, and retry where they may
                except (RedisError, OSError) as exc:  # a socket already broken: gone anyway
                    log.debug("closing connections to the old master: %s", exc)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.follower is not None:
            self.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.follower
            self.follower = None
        await super().aclose(close_connection_pool)
        for client in self.sentinels.sentinels:
            await client.aclose()


def sentinel_master(
    sentinels: list[tuple[str, int]],
    master: str,
    sentinel_options: dict[str, Any],
    options: dict[str, Any],
) -> SentinelArqRedis:
    """The pool of `master`; `options` for its connections (TLS when ssl=True), and
    `sentinel_options` for the Sentinels' own. Nothing connects yet."""
    options = dict(options)
    connection_class = (
        OneAttemptPerAddressTLS if options.pop("ssl", False) else OneAttemptPerAddress
    )
    manager = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        sentinels, sentinel_kwargs=sentinel_options, **options
    )
    client = manager.master_for(
        master, redis_class=SentinelArqRedis, connection_class=connection_class
    )
    client.sentinels, client.master = manager, master
    return cast(SentinelArqRedis, client)


def follow_master(client: ArqRedis) -> None:
    """Through Sentinel, keep `client` on the current master; for one server, nothing."""
    if isinstance(client, SentinelArqRedis):
        client.follow_master()
