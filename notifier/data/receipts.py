"""Receipts: each message the relay accepted, noted in Redis within milliseconds of its `250`, so
the batch that takes over a killed worker's rows records what was already sent instead of
mailing it again.

A send batch writes its outcomes to PostgreSQL about once a second; a worker killed in between
left up to a second of accepted messages in `sending`, and the sweep handed them out again. A
receipt closes that gap: one key per accepted delivery, `<queue>:accepted:<delivery id>` =
"<row created> <accepted> <Message-ID>", written only after the 250 (a message whose 250 never
came must not have one). One writer per process puts every receipt noted meanwhile, by all its
batches, in one write on its own connection; before a batch sends a message, every receipt
but the last NOTIFIER_RECEIPT_LAG (default 1) has landed (jobs/sending.py), so a kill leaves,
per open SMTP connection, the message whose 250 was on its way and at most that many more.

PostgreSQL stays the truth: receipts are deleted once the rows' outcomes are written, expire on
their own, and when Redis is slow or gone nobody waits for them (at least once, as without).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger("notifier.receipts")

# A receipt outlives the longest a dead worker's row can wait to be claimed again: the sweep's
# stale window, once more after a database outage (data/outage.py), and the queue ahead of the
# re-enqueued job. Receipts of recorded rows are deleted at once; this bounds the rest.
MIN_TTL = 24 * 3600.0
# A write not done within this: Redis is slow or gone. Batches stop waiting for receipts and
# none are written for COOL_DOWN seconds (PostgreSQL alone meanwhile: at least once).
WRITE_TIMEOUT = 0.5
COOL_DOWN = 10.0
READ_TIMEOUT = 2.0

Landing = asyncio.Future[None]


def _stamp(at: datetime) -> str:
    return f"{at.timestamp():.6f}"


class ReceiptBook:
    """One per process (Resources.receipts): `note` after each 250, `landed` before the next
    message, `forget` once PostgreSQL has the outcomes, `read` when rows are claimed again."""

    def __init__(self, redis: Redis, prefix: str, stale_after: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = int(max(MIN_TTL, 4 * stale_after))
        self.off_until = float("-inf")  # time.monotonic() until which Redis is not asked
        self.sets: dict[str, str] = {}  # waiting for the writer: key -> value
        self.deletes: list[str] = []
        self.next_write: Landing | None = None  # resolved when what waits now is written
        self.wake = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None  # the writer's own (see _send)
        self.closing = False

    def key(self, delivery_id: int) -> str:
        return f"{self.prefix}:{delivery_id}"

    @property
    def on(self) -> bool:
        return time.monotonic() >= self.off_until and not self.closing

    def note(self, delivery_id: int, created_at: datetime, message_id: str) -> Landing | None:
        """The relay answered 250 for this row: its receipt goes in the next write, whose
        landing this returns (None while Redis is off). The row's creation time goes in too: a
        database rebuilt under the same Redis reuses delivery ids, and a stranger's receipt must
        never stop a mail."""
        if not self.on:
            return None
        value = f"{_stamp(created_at)} {_stamp(datetime.now(UTC))} {message_id}"
        self.sets[self.key(delivery_id)] = value
        return self._kick()

    async def landed(self, landing: Landing | None) -> None:
        """Wait until that receipt is in Redis (a round trip: the batch rendered its next
        message meanwhile). Too slow or failed: Redis goes off for COOL_DOWN, nobody waits."""
        if landing is None or not self.on:
            return
        if landing.done() and not landing.cancelled() and landing.exception() is None:
            return  # the usual case: no wait_for, which yields to the loop even then
        try:
            await asyncio.wait_for(asyncio.shield(landing), WRITE_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as exc:
            self._off(exc)

    def forget(self, delivery_ids: Iterable[int]) -> None:
        """PostgreSQL has these rows' outcomes: their receipts are no longer needed."""
        if self.on and (keys := [self.key(i) for i in delivery_ids]):
            self.deletes.extend(keys)
            self._kick()

    async def read(self, rows: list[tuple[int, datetime]]) -> dict[int, tuple[str, datetime]]:
        """{delivery id: (Message-ID, accepted at)} for the (id, created_at) rows with a receipt
        of theirs. Nothing when Redis does not answer (the rows are sent again)."""
        if not rows:
            return {}
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                values = await self.redis.mget([self.key(i) for i, _ in rows])
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("receipts not read from Redis (%s): rows claimed again are sent again", exc)
            return {}
        found = {}
        for (delivery_id, created_at), value in zip(rows, values, strict=True):
            if value is None:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            created, _, rest = text.partition(" ")
            accepted, _, message_id = rest.partition(" ")
            if created != _stamp(created_at) or not message_id:
                continue  # another database's row under the same id
            try:
                at = datetime.fromtimestamp(float(accepted), UTC)
            except ValueError:
                continue  # not a receipt of ours: sent again rather than trusted
            found[delivery_id] = (message_id, at)
        return found

    async def delete(self, delivery_ids: Iterable[int]) -> None:
        """Now, not with the next write (a batch that found receipts and recorded them)."""
        keys = [self.key(i) for i in delivery_ids]
        if keys:
            with suppress(TimeoutError, RedisError, OSError):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self.redis.delete(*keys)

    async def close(self) -> None:
        """The process ends: what is queued (the last deletes) gets a moment, then no more."""
        writer, self.closing = self.writer, True
        if writer is None:
            return
        self.wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(writer), 2 * WRITE_TIMEOUT)
        except TimeoutError:
            writer.cancel()
            with suppress(asyncio.CancelledError):
                await writer
        await self._drop()

    def _kick(self) -> Landing:
        if self.next_write is None:
            self.next_write = asyncio.get_running_loop().create_future()
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._write_loop(), name="notifier-receipts")
        self.wake.set()
        return self.next_write

    def _off(self, exc: BaseException) -> None:
        if self.on:
            log.warning(
                "receipts not written to Redis (%s: %s); none for %g s: a worker killed "
                "meanwhile may send its last messages again",
                type(exc).__name__,
                exc,
                COOL_DOWN,
            )
        self.off_until = time.monotonic() + COOL_DOWN
        self.sets.clear()
        self.deletes.clear()

    async def _send(self, commands: list[tuple[Any, ...]]) -> None:
        """The commands in one write on the writer's own connection, then their replies.

        Not through the client's pool and a Pipeline: those cost ~75 µs of CPU a round trip
        (the pool's lock and its check for unread data, the pipeline's bookkeeping), which
        made receipts ~15% of a sending worker; a connection of the pool's own kind (TLS,
        Sentinel and all) used by this task alone costs about half. An error reply (a demoted
        master's READONLY) raises like any other: the connection is dropped."""
        reused = self._conn is not None
        while True:
            conn = self._conn
            if conn is None:
                conn = self._conn = self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                await conn.connect()
            try:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                for _ in commands:
                    await conn.read_response()
                return
            except (RedisConnectionError, OSError):
                await self._drop()
                if not reused:
                    raise
                # Closed while idle (a Redis restart, its `timeout`): once more on a new one.
                # SET and DEL may be sent twice.
                reused = False

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):
                await conn.disconnect()

    async def _write_loop(self) -> None:
        """Everything noted since the last write, in one write (SETs before DELs: a receipt
        is deleted only after it was written)."""
        while True:
            if not (self.sets or self.deletes):
                if self.closing:
                    return
                await self.wake.wait()
                self.wake.clear()
                continue
            sets, self.sets = self.sets, {}
            deletes, self.deletes = self.deletes, []
            done, self.next_write = self.next_write, None
            commands: list[tuple[Any, ...]] = [
                ("SET", key, value, "EX", self.ttl) for key, value in sets.items()
            ]
            if deletes:
                commands.append(("DEL", *deletes))
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self._send(commands)
            except (TimeoutError, RedisError, OSError) as exc:
                await self._drop()
                self._off(exc)
                if done is not None:
                    done.set_exception(exc)
                    done.exception()  # retrieved: nobody may be waiting for it
            else:
                if done is not None:
                    done.set_result(None)
