"""arq worker: every job and cron listed with its explicit name, a Worker built from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from arq import cron
from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.worker import Function, Worker, func
from prometheus_client import start_http_server
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notifier.data.heartbeat import WorkerBeat
from notifier.data.sentinel import follow_master
from notifier.jobs import (
    digests,
    fanout,
    ingest,
    maintenance,
    notices,
    retention,
    sending,
    sweep,
    sync,
)
from notifier.metrics import REGISTRY
from notifier.queue import JOB_TIMEOUT, Cron, Job, deserialize, serialize
from notifier.resources import Resources, open_resources, redis_client
from notifier.settings import Settings, parse_bind

log = logging.getLogger("notifier.worker")

# The worker polls Redis several times a second: with this it rides out a Redis restart of up
# to about two minutes (1 s apart at most) instead of exiting; jobs lost with Redis are swept.
REDIS_OUTAGE_RETRIES = 120

# Every job, by the name it is queued under (notifier.queue.Job): explicit, so a rename of a
# function can never orphan jobs already queued in Redis.
FUNCTIONS: tuple[Function, ...] = tuple(
    func(cast(Any, coroutine), name=name.value)
    for name, coroutine in (
        (Job.SEND_CONFIRMATION, notices.send_confirmation),
        (Job.SEND_MANAGE_LINK, notices.send_manage_link),
        (Job.MANAGE_LINK_REQUEST, notices.manage_link_request),
        (Job.INGEST_TRIAL_EVENT, ingest.ingest_trial_event),
        (Job.FANOUT_EVENT, fanout.fanout_event),
        (Job.SEND_SLICE, fanout.send_slice),
        (Job.SEND_DELIVERIES, sending.send_deliveries),
        (Job.SWEEP, sweep.sweep),
        (Job.SEND_DIGEST, digests.send_digest),
        (Job.PURGE_PENDING, maintenance.purge_pending),
    )
)


def every(seconds: float) -> dict[str, Any]:
    """An arq cron schedule for "every `seconds`": whole seconds, minutes or hours (<= daily)."""
    step = max(1, round(seconds))
    if step < 60:
        return {"second": set(range(0, 60, step)), "minute": None}
    if step < 3600:
        return {"second": {0}, "minute": set(range(0, 60, min(60, step // 60)))}
    return {"second": {0}, "minute": {0}, "hour": set(range(0, 24, min(24, step // 3600)))}


def cron_jobs(settings: Settings) -> list[CronJob]:
    """Every cron, with the schedules that come from settings."""
    schedules: tuple[tuple[Cron, Any, dict[str, Any]], ...] = (
        (Cron.SWEEP, sweep.sweep, every(settings.sweep_interval)),
        (Cron.DIGEST_TICK, digests.digest_tick, {"minute": 0}),  # hourly: local midnights
        (Cron.PURGE_PENDING, maintenance.purge_pending, {"minute": {7}, "second": {0}}),
        (Cron.RETENTION, retention.retention, {"minute": {23}, "second": {0}}),
        (
            Cron.STUDY_VERSIONS,
            retention.purge_study_versions,
            {"hour": {3}, "minute": {41}, "second": {0}},
        ),
    )
    if settings.sync_interval:
        schedules += ((Cron.CTGOV_SYNC, sync.sync_cron, every(settings.sync_interval)),)
    return [
        cron(coroutine, name=name.value, unique=True, run_at_startup=False, **schedule)
        for name, coroutine, schedule in schedules
    ]


class NotifierWorker(Worker):
    """arq's Worker on our own Redis pool (TLS, Sentinel: worker_redis), surviving a Redis
    connection dropped while it starts a job.

    arq starts a job inside WATCH/MULTI; redis-py does not retry a connection lost there and
    raises WatchError (or ConnectionError), which ended arq's poll loop and the worker process
    (found by the fault suite's Redis restart). The job was not started: its slot is given
    back and the next poll tries again."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    async def main(self) -> None:
        # Where arq would build its pool from RedisSettings, which knows no Sentinel URL.
        if self._pool is None:
            self._pool = worker_redis(self.settings)
            follow_master(self._pool)
        await super().main()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except RedisError as exc:
                # Raised inside the pipeline, after arq took a slot and counted the job and
                # before it created the job's task: undo exactly that.
                self.job_counter -= 1
                self.sem.release()
                log.warning("Redis dropped while a job started (%s): next poll", exc)
                return


def serve_worker_metrics(settings: Settings) -> int | None:
    """The worker's own counters (deliveries, sends, sweeps) for Prometheus, on the first free
    port of NOTIFIER_WORKER_METRICS_BIND: several workers on one host take one port each. None
    free (or ""): one warning line, and the worker runs without them."""
    bind = parse_bind(settings.worker_metrics_bind)
    if bind is None:
        return None
    host, ports = bind
    for port in ports:
        try:
            start_http_server(port, addr=host, registry=REGISTRY)
        except OSError:
            continue
        log.info("worker metrics on http://%s:%d/metrics", host, port)
        return port
    log.warning(
        "worker metrics off: no free port in NOTIFIER_WORKER_METRICS_BIND=%s "
        "(widen the range for more workers on this host)",
        settings.worker_metrics_bind,
    )
    return None


class _Heartbeat:
    """This worker's heartbeat in Redis (notifier.data.heartbeat), every TTL / 3 until shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.beat = WorkerBeat()
        self.task: asyncio.Task[None] | None = None

    async def start(self, redis: Redis) -> None:
        await self.beat.beat(redis, self.settings.queue_name, self.settings.worker_heartbeat_ttl)
        self.task = asyncio.create_task(self._run(redis), name="notifier-heartbeat")

    async def _run(self, redis: Redis) -> None:
        ttl = self.settings.worker_heartbeat_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                await self.beat.beat(redis, self.settings.queue_name, ttl)
            except (RedisError, OSError) as exc:
                log.warning("heartbeat not written (%s): next one in %.0f s", exc, ttl / 3)

    async def job_started(self, ctx: dict[str, Any]) -> None:
        self.beat.last_job_at = time.time()

    async def stop(self, redis: Redis) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        with contextlib.suppress(RedisError, OSError):
            await self.beat.stop(redis, self.settings.queue_name)


def build_worker(
    settings: Settings,
    resources: Resources | None = None,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    max_jobs: int | None = None,
) -> Worker:
    holder: dict[str, Any] = {}
    # Burst runs (tests, one-off drains) are not a worker the operator counts on.
    heart = None if burst else _Heartbeat(settings)

    async def on_startup(ctx: dict[str, Any]) -> None:
        if resources is not None:
            ctx["resources"] = resources
        else:
            cm = open_resources(settings)
            holder["cm"] = cm
            ctx["resources"] = await cm.__aenter__()
        if heart is not None:
            await heart.start(ctx["resources"].redis)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if heart is not None and "resources" in ctx:
            await heart.stop(ctx["resources"].redis)
        cm = holder.pop("cm", None)
        if cm is not None:
            await cm.__aexit__(None, None, None)

    return NotifierWorker(
        settings,
        functions=list(FUNCTIONS),
        cron_jobs=[] if burst else cron_jobs(settings),
        queue_name=settings.queue_name,
        # The worker opens (main) and on close closes its own pool; jobs enqueue through
        # resources.
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        on_job_start=heart.job_started if heart is not None else None,
        burst=burst,
        handle_signals=handle_signals,
        max_jobs=max_jobs or settings.worker_max_jobs,
        job_timeout=JOB_TIMEOUT,
        keep_result=60,
        max_tries=1000,  # transient failures retry by the ladder; the sweep is the backstop
        # 20 polls a second per worker is nothing for Redis, and the first mail of an event
        # waits for two polls (fan-out, then its first send batch).
        poll_delay=0.05,
        job_serializer=serialize,
        job_deserializer=deserialize,
        # SIGTERM: stop taking jobs and let the ones in flight finish (a send batch takes
        # seconds); whatever is still running after the grace period is recovered by the sweep.
        job_completion_wait=0 if burst else settings.shutdown_grace,
    )


def worker_redis(settings: Settings) -> ArqRedis:
    """The worker's polling pool, retrying through a Redis restart or a Sentinel failover."""
    return redis_client(
        settings,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_OUTAGE_RETRIES),
        # Refused connections (OSError) too: that is what a restarting Redis looks like.
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
    )
