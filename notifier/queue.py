"""Job names and the helpers that queue them: what web, CLI and jobs use, without the worker.

The names are what arq stores with a queued job, so they never change: a job queued before a
deploy must still find its function after it (tests/test_layers.py holds them byte for byte).
"""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from arq.jobs import Job as ArqJob

if TYPE_CHECKING:
    from notifier.resources import Resources
    from notifier.settings import Settings


class Job(StrEnum):
    """Every arq job, by the name it is queued under."""

    SEND_CONFIRMATION = "send_confirmation"
    SEND_MANAGE_LINK = "send_manage_link"
    MANAGE_LINK_REQUEST = "manage_link_request"
    INGEST_TRIAL_EVENT = "ingest_trial_event"
    FANOUT_EVENT = "fanout_event"
    SEND_SLICE = "send_slice"
    SEND_DELIVERIES = "send_deliveries"
    SWEEP = "sweep"
    SEND_DIGEST = "send_digest"
    PURGE_PENDING = "purge_pending"


class Cron(StrEnum):
    """Every cron, by the name arq keys its runs with."""

    SWEEP = "sweep_cron"
    DIGEST_TICK = "digest_tick"
    PURGE_PENDING = "purge_pending_cron"
    RETENTION = "retention_cron"
    STUDY_VERSIONS = "study_versions_cron"
    CTGOV_SYNC = "ctgov_sync_cron"  # only when NOTIFIER_SYNC_INTERVAL is set


# arq's job timeout: a job still running after it is cancelled (and retried). Send batches are
# sized to end well within it (jobs.fanout.batch_size), since a batch cut off in the middle of
# a DATA may send that message again after the sweep.
JOB_TIMEOUT = 600

# Slice jobs enqueued concurrently (each holds a Redis connection while it is enqueued).
ENQUEUE_AT_ONCE = 32

# A send batch should end well within JOB_TIMEOUT.
BATCH_SECONDS = 120


def serialize(data: dict[str, Any]) -> bytes:
    """arq job payloads are JSON: jobs take ids and plain values, never pickled objects."""
    return json.dumps(data, separators=(",", ":")).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(data)
    return result


def job_id(queue_name: str, *parts: object) -> str:
    """An arq job id under a deployment's queue name: arq keeps job and result keys by id alone,
    so two deployments on one Redis (or a bench after another) would otherwise take each
    other's "fanout:1" for a job already done and drop it until the sweep."""
    return ":".join((queue_name, *map(str, parts)))


def batch_size(settings: Settings) -> int:
    """NOTIFIER_SEND_BATCH_SIZE, smaller under a low NOTIFIER_SEND_RATE: the worker's batches
    share the rate, so 500 messages at 5/s over 8 concurrent batches would take 800 s."""
    size = settings.send_batch_size
    if settings.send_rate > 0:
        share = settings.send_rate / settings.worker_max_jobs
        size = min(size, max(1, int(share * BATCH_SECONDS)))
    return size


async def enqueue_confirmation(r: Resources, subscriber_id: int, job_id: str | None = None) -> None:
    await r.redis.enqueue_job(Job.SEND_CONFIRMATION.value, subscriber_id, _job_id=job_id)


async def enqueue_manage_link(r: Resources, subscriber_id: int) -> None:
    await r.redis.enqueue_job(Job.SEND_MANAGE_LINK.value, subscriber_id)


async def enqueue_manage_link_request(r: Resources, email_hash: str, mailbox_hash: str) -> None:
    """A manage link asked for by address: the job looks the address up, so the request that
    asked does the same work whether or not the address is known (hashes, never the address)."""
    await r.redis.enqueue_job(Job.MANAGE_LINK_REQUEST.value, email_hash, mailbox_hash)


async def enqueue_fanout(r: Resources, event_pk: int, *stamp: object) -> None:
    """The fan-out of one stored event; `stamp` makes a fresh job id (sweep, replay) while the
    original may still sit in the queue behind a dead worker's claim."""
    await r.redis.enqueue_job(
        Job.FANOUT_EVENT.value, event_pk, _job_id=r.job_id("fanout", event_pk, *stamp)
    )


async def enqueue_sends(
    r: Resources, delivery_ids: list[int], job_prefix: str, event_pks: list[int] | None = None
) -> None:
    """One send job per batch_size() ids, with ids that make a re-run enqueue nothing new.
    `event_pks[i]` is the event of `delivery_ids[i]`: each job gets its rows' events, so that
    it looks for them in their partitions only (data.partitions)."""
    size = batch_size(r.settings)
    for start in range(0, len(delivery_ids), size):
        chunk = delivery_ids[start : start + size]
        pks = sorted(set(event_pks[start : start + size])) if event_pks else None
        await r.redis.enqueue_job(
            Job.SEND_DELIVERIES.value, chunk, pks, _job_id=r.job_id(job_prefix, chunk[0])
        )


async def enqueue_retry(
    r: Resources, delivery_ids: list[int], defer: float, stamp: str, event_pks: list[int]
) -> None:
    """The send job of rows (of `event_pks`) whose attempt failed transiently, `defer` seconds
    from now."""
    await r.redis.enqueue_job(
        Job.SEND_DELIVERIES.value,
        delivery_ids,
        event_pks,
        _defer_by=defer,
        _job_id=r.job_id("retry", delivery_ids[0], stamp),
    )


async def enqueue_slices(r: Resources, slice_ids: list[int], *stamp: object) -> None:
    """One send_slice job per slice; its id names the slice (and a re-enqueue's `stamp`).

    ENQUEUE_AT_ONCE at a time: arq's enqueue is three Redis round trips (WATCH, EXISTS,
    MULTI/EXEC) on a connection of its own, which one after another took 30% of a 1M-recipient
    fan-out's time (bench/fanout_scheduling); all at once, a sweep of 10,000 slices would open
    10,000 connections."""
    for start in range(0, len(slice_ids), ENQUEUE_AT_ONCE):
        await asyncio.gather(
            *(
                r.redis.enqueue_job(
                    Job.SEND_SLICE.value, slice_id, _job_id=r.job_id("slice", slice_id, *stamp)
                )
                for slice_id in slice_ids[start : start + ENQUEUE_AT_ONCE]
            )
        )


async def enqueue_digest(r: Resources, subscriber_id: int, period: str) -> ArqJob | None:
    """The digest of one subscriber for one period (hour stamp): queued once however often the
    tick runs; None when that job exists already."""
    return await r.redis.enqueue_job(
        Job.SEND_DIGEST.value, subscriber_id, _job_id=r.job_id("digest", subscriber_id, period)
    )
