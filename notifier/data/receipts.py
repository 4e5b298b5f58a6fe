"""Receipts: each message the relay accepted, noted in Redis within milliseconds of its `250`, so
the batch that takes over a killed worker's rows records what was already sent instead of
mailing it again.

A send batch writes its outcomes to PostgreSQL about once a second; a worker killed in between
left up to a second of accepted messages in `sending`, and the sweep handed them out again. A
receipt closes that gap: one key per accepted mail, `<queue>:receipt:<event pk>:<subscriber id>`
(what a delivery row is unique by; a slice's rows are written only after their mails went,
jobs/fanout.py) = "<event received> <accepted> <Message-ID>", written only after the 250 (a
message whose 250 never came must not have one). Each process puts every receipt noted
during one turn of its event loop, by all its batches, in one write on a connection of its
own; before a batch sends a message, every receipt but the last NOTIFIER_RECEIPT_LAG (default
1) has landed (jobs/sending.py), so a kill leaves, per open SMTP connection, the message whose
250 was on its way and at most that many more.

PostgreSQL stays the truth: receipts are deleted once the rows' outcomes are written, expire on
their own, and when Redis is slow or gone nobody waits for them (at least once, as without).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

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
# A mail as receipts know it: (event pk, subscriber id), what its delivery row is unique by.
Mail = tuple[int, int]
# hiredis's stub types the command as a 1-tuple; it takes any number of arguments.
_pack = cast(Callable[[tuple[str | int, ...]], bytes], hiredis.pack_command)


def _stamp(at: datetime) -> str:
    return f"{at.timestamp():.6f}"


@dataclass
class _Write:
    """One write on the wire: its replies still to come, when it is late, and its landing."""

    payload: bytes
    commands: int
    deadline: float  # loop time: the first send's, kept when it is sent again
    landing: Landing | None
    replies: int = -1  # still to come on the connection it went on (set by _Replies.send)
    error: str | None = None  # the first error reply
    resent: bool = False  # sent once more after a lost connection: never a third time


class _Replies(asyncio.Protocol):
    """The receipt connection once open: writes go out as they are, replies are parsed by
    hiredis and counted off against the writes in order, resolving each write's landing from
    the event loop's callback, no task in between.

    redis-py opens the connection (TLS, Sentinel, AUTH, SELECT, as the client is configured)
    and then hands its transport over (`take`): its stream reader and writer, with a task to
    wake for every reply and a timeout context for every write, cost ~30 µs of CPU a write
    here (measured: 70 against 42 µs a write, 184 against 160 µs a mail in a 2-worker
    fan-out). Written against redis-py 5.3 (requirements.lock); tests/test_receipts.py checks
    the attributes it takes the transport from."""

    def __init__(self, transport: asyncio.WriteTransport, lost: Callable[[_Replies], None]) -> None:
        self.transport = transport
        self.stream: asyncio.StreamWriter | None = None
        self.reader = hiredis.Reader()
        self.pending: deque[_Write] = deque()
        self.closed = False
        self._lost = lost

    @classmethod
    async def take(cls, redis: Redis, lost: Callable[[_Replies], None]) -> _Replies:
        conn = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.connect()
            writer = conn._writer  # see the class docstring
            if writer is None:
                raise RedisConnectionError("no connection")
        except BaseException:
            with suppress(Exception):
                await conn.disconnect()
            raise
        protocol = cls(writer.transport, lost)
        writer.transport.set_protocol(protocol)
        # The socket is ours now: redis-py must not close it, nor the stream writer when it is
        # collected (it closes its transport then), so the protocol keeps the writer.
        protocol.stream = writer
        conn._writer = conn._reader = None
        return protocol

    def send(self, write: _Write) -> None:
        write.replies, write.error = write.commands, None  # all of them, on this connection
        self.pending.append(write)
        self.transport.write(write.payload)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.pending:  # a reply nobody asked for: out of step
                self.close()
                return
            write = self.pending[0]
            if isinstance(reply, hiredis.ReplyError) and write.error is None:
                write.error = str(reply)
            write.replies -= 1
            if write.replies == 0:
                self.pending.popleft()
                landing = write.landing
                if landing is not None and not landing.done():
                    if write.error is None:
                        landing.set_result(None)
                    else:  # a demoted master's READONLY, say
                        _fail(landing, ResponseError(write.error))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()


def _fail(landing: Landing | None, exc: BaseException) -> None:
    if landing is not None and not landing.done():
        landing.set_exception(exc)
        landing.exception()  # retrieved: nobody may be waiting for it


class ReceiptBook:
    """One per process (Resources.receipts): `note` after each 250, `landed` before the next
    message, `forget` once PostgreSQL has the outcomes, `read` when rows are claimed again."""

    def __init__(self, redis: Redis, prefix: str, stale_after: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = int(max(MIN_TTL, 4 * stale_after))
        self.off_until = float("-inf")  # time.monotonic() until which Redis is not asked
        self.sets: dict[str, str] = {}  # waiting for the next write: key -> value
        self.deletes: list[str] = []
        self.next_write: Landing | None = None  # resolved when what waits now has landed
        self._flush_soon = False  # a flush is scheduled for the end of this loop turn
        self._conn: _Replies | None = None  # the connection of receipts (see _Replies)
        self._opening: asyncio.Task[None] | None = None
        self._watch: asyncio.TimerHandle | None = None  # checks the oldest write's deadline
        self.closing = False

    def key(self, event_pk: int, subscriber_id: int) -> str:
        return f"{self.prefix}:{event_pk}:{subscriber_id}"

    @property
    def on(self) -> bool:
        return time.monotonic() >= self.off_until and not self.closing

    def note(
        self, event_pk: int, subscriber_id: int, event_at: datetime, message_id: str
    ) -> Landing | None:
        """The relay answered 250 for this mail: its receipt goes in the next write, whose
        landing this returns (None while Redis is off). When the event was received goes in
        too: a database rebuilt under the same Redis reuses event and subscriber ids, and a
        stranger's receipt must never stop a mail."""
        if not self.on:
            return None
        value = f"{_stamp(event_at)} {time.time():.6f} {message_id}"
        self.sets[self.key(event_pk, subscriber_id)] = value
        return self._kick()

    async def landed(self, landing: Landing | None) -> None:
        """Wait until that receipt is in Redis (a round trip: the batch rendered its next
        message meanwhile). Too slow or failed: Redis goes off for COOL_DOWN, nobody waits."""
        if landing is None or not self.on:
            return
        if not landing.done():
            try:
                # Shielded: one landing is shared by every receipt of a write, and a batch
                # cancelled while it waits must not cancel it for the others.
                await asyncio.shield(landing)
            except (TimeoutError, RedisError, OSError) as exc:
                self._off(exc)
            return
        if not landing.cancelled() and (failed := landing.exception()) is not None:
            self._off(failed)

    def forget(self, mails: Iterable[Mail]) -> None:
        """PostgreSQL has these mails' outcomes: their receipts are no longer needed."""
        if self.on and (keys := [self.key(e, s) for e, s in mails]):
            self.deletes.extend(keys)
            self._kick()

    async def read(
        self, mails: list[tuple[int, int, datetime]]
    ) -> dict[Mail, tuple[str, datetime]]:
        """{(event pk, subscriber id): (Message-ID, accepted at)} for the (event pk, subscriber
        id, event received) mails with a receipt of theirs. Nothing when Redis does not answer
        (the mails are sent again)."""
        if not mails:
            return {}
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                values = await self.redis.mget([self.key(e, s) for e, s, _ in mails])
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("receipts not read from Redis (%s): mails tried again are sent again", exc)
            return {}
        found = {}
        for (event_pk, subscriber_id, event_at), value in zip(mails, values, strict=True):
            if value is None:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            stamp, _, rest = text.partition(" ")
            accepted, _, message_id = rest.partition(" ")
            if stamp != _stamp(event_at) or not message_id:
                continue  # another database's event under the same id
            try:
                at = datetime.fromtimestamp(float(accepted), UTC)
            except ValueError:
                continue  # not a receipt of ours: sent again rather than trusted
            found[(event_pk, subscriber_id)] = (message_id, at)
        return found

    async def delete(self, mails: Iterable[Mail]) -> None:
        """Now, not with the next write (a batch that found receipts and recorded them)."""
        keys = [self.key(e, s) for e, s in mails]
        if keys:
            with suppress(TimeoutError, RedisError, OSError):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self.redis.delete(*keys)

    async def close(self) -> None:
        """The process ends: what is queued (the last deletes) gets a moment, then no more."""
        self.closing = True
        if self.sets or self.deletes:
            self._flush()
        opening = self._opening
        if opening is not None:
            with suppress(Exception):
                await asyncio.wait_for(asyncio.shield(opening), WRITE_TIMEOUT)
        conn = self._conn
        deadline = time.monotonic() + 2 * WRITE_TIMEOUT
        while conn is not None and conn.pending and not conn.closed:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        self._drop()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _kick(self) -> Landing:
        """The landing of the next write, which goes out at the end of this turn of the event
        loop with everything noted in it (every batch whose relay answered meanwhile)."""
        landing = self.next_write
        if landing is None:
            loop = asyncio.get_running_loop()
            landing = self.next_write = loop.create_future()
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)
        return landing

    def _flush(self) -> None:
        """Write what waits (SETs before DELs: a receipt is deleted only after it was
        written), opening the connection first if there is none."""
        self._flush_soon = False
        if not (self.sets or self.deletes):
            return
        conn = self._conn
        if conn is None or conn.closed:
            if self._opening is None:
                self._opening = asyncio.create_task(self._open(), name="notifier-receipts")
            return  # written once open
        sets, self.sets = self.sets, {}
        deletes, self.deletes = self.deletes, []
        landing, self.next_write = self.next_write, None
        commands = [_pack(("SET", k, v, "EX", self.ttl)) for k, v in sets.items()]
        if deletes:
            commands.append(_pack(("DEL", *deletes)))
        deadline = asyncio.get_running_loop().time() + WRITE_TIMEOUT
        self._send(conn, _Write(b"".join(commands), len(commands), deadline, landing))

    async def _open(self, again: list[_Write] | None = None) -> None:
        """Open the connection, send `again` (writes a lost connection took with it) and what
        waits meanwhile."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                conn = await _Replies.take(self.redis, self._lost)
        except Exception as exc:  # Redis slow or gone; or a redis-py without what take() reads
            for write in again or ():
                _fail(write.landing, exc)
            self._off(exc)
            return
        finally:
            self._opening = None
        self._conn = conn
        for write in again or ():
            self._send(conn, write)  # with its first deadline: a resend gets no more time
        if self.sets or self.deletes:
            self._flush()

    def _send(self, conn: _Replies, write: _Write) -> None:
        conn.send(write)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_at(write.deadline, self._check_deadline)

    def _lost(self, conn: _Replies) -> None:
        """The connection closed. Closed by Redis while idle (a restart, its `timeout`): the
        next write opens a new one. With writes on it: they go once more on a new one (SET and
        DEL twice is harmless), as their replies can no longer come on this one."""
        if conn is not self._conn:
            return  # dropped by us: its writes were failed then
        self._conn = None
        again, conn.pending = list(conn.pending), deque()
        if not again:
            return
        if any(write.resent for write in again) or self.closing or self._opening is not None:
            # Lost twice (a flapping Redis): not a third time, and receipts go off.
            lost = RedisConnectionError("connection to Redis lost")
            for write in again:
                _fail(write.landing, lost)
            if self.on and not self.closing:
                self._off(lost)
            return
        if not self.on:
            for write in again:
                _fail(write.landing, RedisConnectionError("connection to Redis lost"))
            return
        for write in again:
            write.resent = True
        self._opening = asyncio.get_running_loop().create_task(
            self._open(again), name="notifier-receipts"
        )

    def _check_deadline(self) -> None:
        """The watch timer: a write whose replies are later than WRITE_TIMEOUT means Redis is
        slow or gone; otherwise look again at the oldest write's deadline."""
        self._watch = None
        conn = self._conn
        if conn is None or not conn.pending:
            return
        oldest = conn.pending[0].deadline
        loop = asyncio.get_running_loop()
        if loop.time() >= oldest:
            self._off(TimeoutError(f"no reply from Redis in {WRITE_TIMEOUT} s"))
        else:
            self._watch = loop.call_at(max(oldest, loop.time() + 0.001), self._check_deadline)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            pending, conn.pending = list(conn.pending), deque()
            conn.close()
            for write in pending:
                _fail(write.landing, RedisConnectionError("receipts connection closed"))

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
        landing, self.next_write = self.next_write, None
        _fail(landing, exc)
        self._drop()  # replies still due would be out of step with the next writes
