"""The documented helper for sync pipelines: sign and POST events, or enqueue the ingest job.

Over HTTP (any network)::

    from notifier.pipeline import post_events
    result = await post_events("https://notify.example.org/v1/events", events, secret)
    # {"accepted": 480, "duplicates": 20}

Inside the trusted network, a Python pipeline with access to the service's Redis may skip HTTP::

    from notifier.pipeline import enqueue_event
    redis = await connect_redis(Settings())  # notifier.resources / notifier.settings
    await enqueue_event(redis, event)  # validated, stored, deduplicated by the worker

Both paths are safe to retry: `event_id` is the idempotency key.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from arq.connections import ArqRedis
from arq.jobs import Job

from notifier.core.signing import HEADER, header_value

MAX_BATCH = 500
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class EventsRejected(Exception):
    """The service refused a batch (4xx): fix the events; retrying the same body cannot help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


def sign(body: bytes, secret: str, t: int | None = None) -> str:
    """The `Notifier-Signature` header value for this exact body."""
    return header_value(body, secret, int(time.time()) if t is None else t)


def encode(events: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps({"events": list(events)}, separators=(",", ":"), default=str).encode()


async def post_events(
    url: str,
    events: Sequence[dict[str, Any]],
    secret: str,
    *,
    session: aiohttp.ClientSession | None = None,
    batch_size: int = MAX_BATCH,
    attempts: int = 5,
    request_timeout: float = 30.0,
) -> dict[str, int]:
    """POST events to `url` (the /v1/events endpoint) in signed batches; returns the totals.

    Network errors and 429/5xx are retried with backoff, each try freshly signed; a 4xx other
    than 429 raises EventsRejected at once. Resending after an unclear failure is always safe.
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be 1..{MAX_BATCH}")
    own = session is None
    client = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout))
    totals = {"accepted": 0, "duplicates": 0}
    try:
        for start in range(0, len(events), batch_size):
            body = encode(events[start : start + batch_size])
            result = await _post(client, url, body, secret, attempts)
            totals["accepted"] += int(result["accepted"])
            totals["duplicates"] += int(result["duplicates"])
    finally:
        if own:
            await client.close()
    return totals


async def _post(
    client: aiohttp.ClientSession, url: str, body: bytes, secret: str, attempts: int
) -> dict[str, Any]:
    delay = 0.5
    for attempt in range(1, attempts + 1):
        headers = {HEADER: sign(body, secret), "Content-Type": "application/json"}
        try:
            # A stream, not bytes: a 500-event batch may pass aiohttp's 1 MiB raw-bytes warning.
            async with client.post(url, data=io.BytesIO(body), headers=headers) as resp:
                text = await resp.text()
                if resp.status == 202:
                    result: dict[str, Any] = json.loads(text)
                    return result
                if resp.status not in RETRY_STATUSES or attempt == attempts:
                    raise EventsRejected(resp.status, text)
        except (aiohttp.ClientError, TimeoutError):
            if attempt == attempts:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
    raise ValueError("attempts must be at least 1")


async def enqueue_event(
    redis: ArqRedis, event: dict[str, Any], *, queue_name: str | None = None
) -> Job | None:
    """Enqueue the `ingest_trial_event` job with one event.

    `redis` must serialise jobs as JSON and use the service's queue (NOTIFIER_QUEUE_NAME):
    `notifier.resources.connect_redis(settings)` returns such a pool.
    """
    return await redis.enqueue_job("ingest_trial_event", event, _queue_name=queue_name)
