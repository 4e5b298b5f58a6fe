"""Receipts: each message the relay accepted, noted in Redis within milliseconds of its `250`, so
the batch that takes over a killed worker's rows records what was already sent instead of
mailing it again.

A send batch writes its outcomes to PostgreSQL about once a second (sending.FLUSH_SECONDS); a
worker killed in between leaves up to a second of accepted messages in `sending`, and the sweep
hands them out again. The receipt closes that gap: one Redis key per accepted delivery, written
by a background task right after the 250 (never before: a message whose 250 never came must not
have one), and the batch sends its next message only once the previous receipt is in Redis. So
a kill leaves at most one accepted, unnoted message per open SMTP connection: the one whose 250
was on its way. A later batch that claims a row again (attempts > 1) looks for its receipt
first (`unless_already_sent`). PostgreSQL stays the truth: a receipt is deleted once the row's
outcome is written, and when Redis is slow or gone the batch stops noting and sends as before
(at least once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextlib import suppress
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from notifier.clock import utcnow
from notifier.data.states import DeliveryStatus
from notifier.jobs.outcomes import Claimed, Outcome, record
from notifier.metrics import RESENDS_AVOIDED
from notifier.resources import Resources

log = logging.getLogger("notifier.sending")

# A receipt outlives the longest a dead worker's row can wait to be claimed again: the sweep's
# stale window, once more after a database outage (Resources.outage), and the queue ahead of the
# re-enqueued job. Receipts of recorded rows are deleted at once; this bounds the rest.
MIN_TTL = 24 * 3600.0
# A receipt not in Redis this long after its 250: this batch stops noting and waiting (Redis is
# slow or gone; PostgreSQL alone, at least once, as without receipts).
WRITE_TIMEOUT = 0.5
LOOKUP_TIMEOUT = 2.0


def receipt_key(r: Resources, delivery_id: object) -> str:
    return r.job_id("accepted", delivery_id)


def _stamp(at: datetime) -> str:
    return f"{at.timestamp():.6f}"


class Receipts:
    """One send batch's receipts: `note` after each 250, `landed` before the next message,
    `forget` once PostgreSQL has the outcomes, `close` at the end of the batch."""

    def __init__(self, r: Resources) -> None:
        self.r = r
        self.redis: Redis = r.redis
        self.ttl = int(max(MIN_TTL, 4 * r.settings.sweep_stale_after))
        self.enabled = True
        self.closing = False
        self.sets: dict[str, str] = {}  # key -> value, waiting for the writer
        self.deletes: list[str] = []
        self.wake = asyncio.Event()
        self.next_write: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_note: asyncio.Future[None] | None = None
        self.writer: asyncio.Task[None] | None = None

    async def note(self, c: Claimed, message_id: str) -> None:
        """The relay answered 250 for `c`: have its receipt written, and let the writer put it
        on the wire before this batch renders its next message (the write overlaps the render)."""
        if not self.enabled:
            return
        # The row's creation time too: a database rebuilt under the same Redis reuses delivery
        # ids, and a stranger's receipt must never stop a mail.
        value = f"{_stamp(c.created_at)} {_stamp(utcnow())} {message_id}"
        self.sets[receipt_key(self.r, c.id)] = value
        self.last_note = self.next_write
        self._kick()
        await asyncio.sleep(0)

    async def landed(self) -> None:
        """Wait until the last receipt noted is in Redis (usually already: a Redis round trip is
        shorter than rendering a message). After WRITE_TIMEOUT, or an error, stop noting."""
        pending, self.last_note = self.last_note, None
        if pending is None or not self.enabled:
            return
        try:
            await asyncio.wait_for(asyncio.shield(pending), WRITE_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as exc:
            self._give_up(exc)

    def forget(self, outcomes: Iterable[Outcome]) -> None:
        """PostgreSQL has these outcomes: their receipts are no longer needed."""
        if not self.enabled:
            return
        sent = DeliveryStatus.SENT
        keys = [receipt_key(self.r, o.delivery.id) for o in outcomes if o.status == sent]
        if keys:
            self.deletes.extend(keys)
            self._kick()

    async def close(self) -> None:
        """End of the batch: the writer finishes what is queued (the last deletes), briefly."""
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

    def _kick(self) -> None:
        if self.writer is None:
            self.writer = asyncio.create_task(self._write_loop(), name="notifier-receipts")
        self.wake.set()

    def _give_up(self, exc: BaseException) -> None:
        if self.enabled:
            log.warning(
                "receipts not written to Redis (%s: %s): this batch goes on without them, "
                "a killed worker's messages may be sent again",
                type(exc).__name__,
                exc,
            )
        self.enabled = False
        self.sets.clear()
        self.deletes.clear()

    async def _write_loop(self) -> None:
        """Everything noted since the last write, in one pipeline (SETs before DELs: a receipt
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
            done, self.next_write = self.next_write, asyncio.get_running_loop().create_future()
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key, value in sets.items():
                    pipe.set(key, value, ex=self.ttl)
                if deletes:
                    pipe.delete(*deletes)
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await pipe.execute()
            except (TimeoutError, RedisError, OSError) as exc:
                self._give_up(exc)
                done.set_exception(exc)
                done.exception()  # retrieved: nobody may be waiting for it
            else:
                done.set_result(None)


async def unless_already_sent(r: Resources, claimed: list[Claimed]) -> list[Claimed]:
    """The claimed rows still to send: those claimed before (attempts > 1) whose receipt says
    the relay accepted them are recorded `sent`, with the receipt's message id and time, and
    left out. All of them when Redis does not answer (sent again: at least once)."""
    again = [c for c in claimed if c.attempts > 1]
    if not again:
        return claimed
    keys = [receipt_key(r, c.id) for c in again]
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT):
            values = await r.redis.mget(keys)
    except (TimeoutError, RedisError, OSError) as exc:
        log.warning("receipts not read from Redis (%s): rows claimed again are sent again", exc)
        return claimed
    accepted = [
        outcome
        for c, value in zip(again, values, strict=True)
        if (outcome := _accepted(c, value)) is not None
    ]
    if not accepted:
        return claimed
    await record(r, accepted, {}, [])
    RESENDS_AVOIDED.inc(len(accepted))
    log.info("%d message(s) sent before their worker died recorded as sent", len(accepted))
    with suppress(TimeoutError, RedisError, OSError):
        async with asyncio.timeout(WRITE_TIMEOUT):
            await r.redis.delete(*(receipt_key(r, o.delivery.id) for o in accepted))
    known = {o.delivery.id for o in accepted}
    return [c for c in claimed if c.id not in known]


def _accepted(c: Claimed, value: bytes | str | None) -> Outcome | None:
    """The `sent` outcome a receipt proves, or None."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    created, _, rest = text.partition(" ")
    accepted, _, message_id = rest.partition(" ")
    if created != _stamp(c.created_at) or not message_id:
        return None  # another database's row under the same id
    try:
        at = datetime.fromtimestamp(float(accepted), UTC)
    except ValueError:
        return None  # not a receipt of ours: sent again rather than trusted
    return Outcome(c, DeliveryStatus.SENT, message_id=message_id, sent_at=at)
