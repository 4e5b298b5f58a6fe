"""arq worker: the job registry with explicit names, cron jobs, a Worker built from Settings."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from arq import cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function, Worker, func
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notifier.resources import Resources, deserialize, open_resources, redis_settings, serialize
from notifier.settings import Settings

log = logging.getLogger("notifier.worker")

# The worker polls Redis several times a second: with this it rides out a Redis restart of up
# to about two minutes (1 s apart at most) instead of exiting; jobs lost with Redis are swept.
REDIS_OUTAGE_RETRIES = 120

JOB_FUNCTIONS: list[Function] = []
CRON_JOBS: list[CronJob] = []
# Crons whose schedule comes from Settings (read when a worker is built, never at import).
CRON_SCHEDULES: dict[str, Callable[[Settings], dict[str, Any]]] = {}


Job = TypeVar("Job", bound=Callable[..., Awaitable[Any]])


def register(name: str, **options: Any) -> Callable[[Job], Job]:
    """Decorator: register an arq job under an explicit, stable name."""

    def wrap(coroutine: Job) -> Job:
        JOB_FUNCTIONS.append(func(cast(Any, coroutine), name=name, **options))
        return coroutine

    return wrap


def register_cron(
    name: str,
    *,
    schedule_from: Callable[[Settings], dict[str, Any]] | None = None,
    **schedule: Any,
) -> Callable[[Job], Job]:
    """Register a cron job; `schedule_from(settings)` overrides `schedule` per worker."""

    def wrap(coroutine: Job) -> Job:
        CRON_JOBS.append(
            cron(cast(Any, coroutine), name=name, unique=True, run_at_startup=False, **schedule)
        )
        if schedule_from is not None:
            CRON_SCHEDULES[name] = schedule_from
        return coroutine

    return wrap


def every(seconds: float) -> dict[str, Any]:
    """An arq cron schedule for "every `seconds`" (at most hourly): whole seconds or minutes."""
    step = max(1, round(seconds))
    if step < 60:
        return {"second": set(range(0, 60, step)), "minute": None}
    return {"second": {0}, "minute": set(range(0, 60, min(60, step // 60)))}


def _cron_jobs(settings: Settings) -> list[CronJob]:
    jobs = []
    for job in CRON_JOBS:
        schedule = CRON_SCHEDULES.get(job.name)
        jobs.append(dataclasses.replace(job, **schedule(settings)) if schedule else job)
    return jobs


def _load_jobs() -> None:
    # Importing these modules registers their jobs; keep the list explicit.
    import notifier.jobs  # noqa: F401  # registration side effect


class NotifierWorker(Worker):
    """arq's Worker, surviving a Redis connection dropped while it starts a job.

    arq starts a job inside WATCH/MULTI; redis-py does not retry a connection lost there and
    raises WatchError (or ConnectionError), which ended arq's poll loop and the worker process
    (found by the fault suite's Redis restart). The job was not started: its slot is given
    back and the next poll tries again."""

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


def build_worker(
    settings: Settings,
    resources: Resources | None = None,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    max_jobs: int | None = None,
) -> Worker:
    _load_jobs()
    holder: dict[str, Any] = {}

    async def on_startup(ctx: dict[str, Any]) -> None:
        if resources is not None:
            ctx["resources"] = resources
            return
        cm = open_resources(settings)
        holder["cm"] = cm
        ctx["resources"] = await cm.__aenter__()

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        cm = holder.pop("cm", None)
        if cm is not None:
            await cm.__aexit__(None, None, None)

    return NotifierWorker(
        functions=list(JOB_FUNCTIONS),
        cron_jobs=[] if burst else _cron_jobs(settings),
        queue_name=settings.queue_name,
        redis_settings=worker_redis_settings(settings),
        # The worker opens (and on close, closes) its own pool; jobs enqueue through resources.
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        burst=burst,
        handle_signals=handle_signals,
        max_jobs=max_jobs or settings.worker_max_jobs,
        job_timeout=600,
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


def worker_redis_settings(settings: Settings) -> RedisSettings:
    rs = redis_settings(settings, retries=0)
    rs.retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_OUTAGE_RETRIES)
    # Refused connections (OSError) too: that is what a restarting Redis looks like.
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    return rs


def resources_of(ctx: dict[str, Any]) -> Resources:
    resources: Resources = ctx["resources"]
    return resources
