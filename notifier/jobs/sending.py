"""The send job: mail a batch of claimed deliveries over one SMTP connection, at the shared rate.

Outcomes are written at least every FLUSH_SECONDS and at the end of the batch; in between, each
accepted message has a receipt in Redis (data/receipts.py) soon enough (NOTIFIER_RECEIPT_LAG) that
a worker killed with SIGKILL repeats at most the message each of its batches had in flight and
the one before it whose receipt was still on its way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from limits import RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter

from notifier.clock import utcnow
from notifier.core.matching import Matched
from notifier.data.receipts import Landing
from notifier.data.states import DeliveryStatus
from notifier.jobs.context import resources_of
from notifier.jobs.outcomes import (
    Claimed,
    Outcome,
    Outgoing,
    SliceClaim,
    claim,
    failure,
    prepare,
    record,
    render,
)
from notifier.jobs.receipts import forget_sent, unless_already_sent
from notifier.logs import mask
from notifier.mail.alerts import AlertRenderer
from notifier.mail.message import sender_address
from notifier.mailer import ConnectionLost, SendError
from notifier.metrics import MAILS, SEND_SECONDS
from notifier.resources import Resources

log = logging.getLogger("notifier.sending")

FLUSH_SECONDS = 1.0
MAX_RECONNECTS = 3  # per batch: sessions a relay may drop before the rest waits for a retry
# A batch sends only while its claim is younger than this share of NOTIFIER_SWEEP_STALE_AFTER:
# an older claim (its renewal held up by a database outage) may have been handed to another job.
CLAIM_LAPSE = 0.8
ALERTS_MAILED = MAILS.labels("alert")  # looked up once: every mail of a fan-out counts here


class SendRate:
    """`send_rate` messages/s over every worker, kept in Redis; waits rather than drops."""

    def __init__(self, r: Resources) -> None:
        rate = r.settings.send_rate
        self.enabled = rate > 0
        # An integer count per whole-second window that never exceeds the configured rate.
        window = max(1, math.ceil(1 / rate)) if self.enabled else 1
        self.item = RateLimitItemPerSecond(max(1, int(rate * window)), window)
        self.limiter = MovingWindowRateLimiter(r.limits_storage)

    async def acquire(
        self, heartbeat: Callable[[], Awaitable[None]] | None = None, every: float = 30.0
    ) -> None:
        """Wait for a slot; while waiting, call `heartbeat` every `every` seconds (the batch
        refreshes its claim, so the sweep never takes a slow but live batch for a dead one)."""
        if not self.enabled:
            return
        last = time.monotonic()
        while not await self.limiter.hit(self.item, "send"):
            stats = await self.limiter.get_window_stats(self.item, "send")
            await asyncio.sleep(min(1.0, every, max(0.005, stats.reset_time - time.time())))
            if heartbeat is not None and time.monotonic() - last >= every:
                await heartbeat()
                last = time.monotonic()


class ClaimLapsed(Exception):
    """A batch's claim on its unsent rows may have been taken over by the sweep."""


class Batch:
    """One send batch over one SMTP connection at the configured rate, recording outcomes as it
    goes.

    `renewed` is when the rows' claim was written (time.monotonic()). A row is sent only while
    the claim is fresh, which flushes renew; a batch whose renewal was held up (PostgreSQL
    unreachable longer than most of NOTIFIER_SWEEP_STALE_AFTER) stops and leaves its unsent
    rows to the sweep rather than race the job the sweep may have given them to."""

    def __init__(
        self,
        r: Resources,
        outgoing: list[Outgoing],
        hashes: dict[int, str],
        renderers: dict[int, AlertRenderer],
        renewed: float,
        event_at: dict[int, datetime],
        slice_: SliceClaim | None = None,
    ) -> None:
        self.r = r
        self.hashes = hashes
        self.renderers = renderers
        self.renewed = renewed
        self.event_at = event_at  # when each event was received: receipts carry it
        self.slice = slice_  # a slice's batch writes its rows as it records (jobs/outcomes.py)
        self.queue = deque(outgoing)
        self.done: list[Outcome] = []
        self.last_flush = time.monotonic()
        self.lapse = r.settings.sweep_stale_after * CLAIM_LAPSE
        self.rate = SendRate(r)
        self.sender = sender_address(r.settings)
        self.receipts: deque[Landing | None] = deque()  # on their way to Redis (data/receipts.py)

    def lapsed(self) -> bool:
        return time.monotonic() - self.renewed >= self.lapse

    def owned(self, outcomes: list[Outcome]) -> list[Outcome]:
        """After the claim lapsed (a send or a reconnect that hung), the rows may be another
        job's: only what was sent is still ours to record; a retry or a failure written now
        could put a row another job has sent back to pending."""
        return (
            [o for o in outcomes if o.status == DeliveryStatus.SENT] if self.lapsed() else outcomes
        )

    def forget(self, outcomes: list[Outcome]) -> None:
        """The receipts of what was just recorded go, unless the claim lapsed: the job the
        sweep handed the mails to may not have read them yet, and reads them, not our rows,
        to know who was mailed (they expire on their own)."""
        if not self.lapsed():
            forget_sent(self.r, outcomes)

    async def flush(self) -> None:
        """Record what was sent and refresh the claim of the rest (also while waiting for the
        send rate: a slow but live batch must never look dead to the sweep)."""
        outcomes, self.done = self.owned(self.done), []
        started = time.monotonic()
        await record(
            self.r, outcomes, self.hashes, [i.delivery for i in self.queue], slice_=self.slice
        )
        self.forget(outcomes)
        self.last_flush = time.monotonic()
        if not self.lapsed():
            self.renewed = started  # the refresh was written at or after `started`
        # Else the sweep may have taken the rows before the refresh landed: `renewed` stays old
        # and the batch stops before its next message.

    async def run(self) -> None:
        reconnects = 0
        try:
            while self.queue:
                # A relay that drops one session (421, a reset) usually takes the next at once:
                # reconnect and go on; only the message in flight waits for its retry. A relay
                # that refuses the connection itself, or keeps dropping it, gets the whole rest
                # of the batch back on the retry ladder.
                try:
                    await self._session()
                except ConnectionLost as exc:
                    reconnects += 1
                    if reconnects > MAX_RECONNECTS or not self.queue:
                        raise
                    log.warning(
                        "SMTP session lost, reconnecting (%d): %s", reconnects, mask(str(exc))
                    )
        except ClaimLapsed as exc:
            # Unsent rows stay as they are: claimed by this batch (the sweep hands them out once
            # stale) or already handed to another job. Either way, not sent from here.
            log.warning("%s: left to the sweep", exc)
        except ConnectionLost as exc:
            # Every message still queued: the relay is not taking connections, try again later.
            now = utcnow()
            self.done.extend(failure(self.r, item.delivery, exc, now) for item in self.queue)
            log.warning(
                "SMTP connection lost, %d message(s) will be retried: %s",
                len(self.queue),
                mask(str(exc)),
            )
            self.queue.clear()  # each has its outcome (a retry)
        finally:
            # Also on any other error: what was sent is recorded; the rest stays claimed for
            # the sweep (a slice's too: it stays `sending` until every mail has its row).
            outcomes = self.owned(self.done)
            final = not self.queue and not self.lapsed()
            await record(self.r, outcomes, self.hashes, [], slice_=self.slice, final=final)
            self.forget(outcomes)

    async def _session(self) -> None:
        """Send the queue's messages over one SMTP connection until it is empty or drops.

        Without a send rate, the next message is rendered before this one goes, so that its
        envelope can travel with this one's content (Connection.send's `then`); with a rate,
        each message waits for its slot first and the server never waits in DATA for it."""
        r, queue = self.r, self.queue
        async with r.mailer.connect() as conn:
            current = self._rendered(0)
            while current is not None:
                item, (sent, data) = queue[0], current
                await self.rate.acquire(
                    heartbeat=self.flush, every=r.settings.sweep_stale_after / 3
                )
                if self.lapsed():
                    raise ClaimLapsed(
                        f"claim of {len(queue)} unsent message(s) not renewed in time"
                    )
                # At most NOTIFIER_RECEIPT_LAG accepted messages without their receipt in Redis
                # while this one goes (the most a SIGKILL re-sends besides this one).
                while len(self.receipts) > r.settings.receipt_lag:
                    await r.receipts.landed(self.receipts.popleft())
                following = None if self.rate.enabled else self._rendered(1)
                then = queue[1].email if following is not None else None
                started = time.perf_counter()
                try:
                    await conn.send(self.sender, item.email, data, then=then)
                except ConnectionLost as exc:
                    self.done.append(failure(r, item.delivery, exc, utcnow()))
                    queue.popleft()
                    raise
                except SendError as exc:
                    self.done.append(failure(r, item.delivery, exc, utcnow()))
                    # Ids, never the address (and a relay's reply may quote it: masked).
                    log.warning(
                        "mail of delivery %d (subscriber %d) %s: %s",
                        item.delivery.id,
                        item.delivery.subscriber_id,
                        "refused" if exc.permanent else "deferred, will retry",
                        mask(str(exc)),
                    )
                else:
                    self.done.append(sent)
                    if sent.message_id is not None:
                        c = item.delivery
                        at = self.event_at[c.event_pk]
                        landing = r.receipts.note(c.event_pk, c.subscriber_id, at, sent.message_id)
                        self.receipts.append(landing)
                    ALERTS_MAILED.inc()
                    log.info(
                        "mail sent: alert for event %d, delivery %d (subscriber %d)",
                        item.delivery.event_pk,
                        item.delivery.id,
                        item.delivery.subscriber_id,
                    )
                finally:
                    SEND_SECONDS.observe(time.perf_counter() - started)
                queue.popleft()
                current = following if following is not None else self._rendered(0)
                if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
                    await self.flush()

    def _rendered(self, index: int) -> tuple[Outcome, bytes] | None:
        """The message for queue[index], or None when the queue ends before it. An item that
        cannot render is recorded as failed and leaves the queue (one unrenderable event must
        not wedge a batch); the item after it takes its place."""
        while len(self.queue) > index:
            sent, data = render(self.r, self.renderers, self.queue[index])
            if data is not None:
                return sent, data
            self.done.append(sent)
            del self.queue[index]
        return None


async def send_batch(
    r: Resources, delivery_ids: list[int], event_pks: list[int] | None = None
) -> dict[str, int]:
    """Claim, re-check and send these delivery rows (of `event_pks`, when known): the work of
    send_deliveries and send_slice."""
    claimed_at = time.monotonic()
    return await send_claimed(r, await claim(r, delivery_ids, event_pks), claimed_at)


async def send_claimed(
    r: Resources,
    claimed: list[Claimed],
    claimed_at: float,
    slice_: SliceClaim | None = None,
    matches: dict[int, list[Matched]] | None = None,
) -> dict[str, int]:
    """Re-check and send rows this job has claimed (at `claimed_at`, time.monotonic(), or
    before: the claim's lapse is counted from it); or, with `slice_`, the mails of a slice this
    job has taken, whose rows are written with their outcomes, and `matches`, its recipients'
    matching subscriptions as the take read them (the re-check is not read twice)."""
    if not claimed:
        if slice_ is not None:
            await record(r, [], {}, [], slice_=slice_, final=True)
        return {"claimed": 0}
    # A dead worker's mails the relay had accepted: recorded, not sent again.
    claimed = await unless_already_sent(r, claimed, slice_)
    ready = await prepare(r, claimed, matches)
    final = slice_ is not None and not ready.outgoing
    await record(r, ready.outcomes, ready.hashes, [], slice_=slice_, final=final)
    if ready.outgoing:
        batch = Batch(
            r, ready.outgoing, ready.hashes, ready.renderers, claimed_at, ready.event_at, slice_
        )
        await batch.run()
    return {"claimed": len(claimed), "sent_or_tried": len(ready.outgoing)}


async def send_deliveries(
    ctx: dict[str, Any], delivery_ids: list[int], event_pks: list[int] | None = None
) -> dict[str, int]:
    """A batch by id; `event_pks` (their events) is absent from jobs queued before 0007."""
    pks = [int(pk) for pk in event_pks] if event_pks else None
    return await send_batch(resources_of(ctx), [int(i) for i in delivery_ids], pks)
