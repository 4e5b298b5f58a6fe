"""arq worker: the job registry with explicit names, cron jobs, a Worker built from Settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from arq import cron
from arq.cron import CronJob
from arq.worker import Function, Worker, func

from notifier.resources import Resources, deserialize, open_resources, redis_settings, serialize
from notifier.settings import Settings

JOB_FUNCTIONS: list[Function] = []
CRON_JOBS: list[CronJob] = []


Job = TypeVar("Job", bound=Callable[..., Awaitable[Any]])


def register(name: str, **options: Any) -> Callable[[Job], Job]:
    """Decorator: register an arq job under an explicit, stable name."""

    def wrap(coroutine: Job) -> Job:
        JOB_FUNCTIONS.append(func(cast(Any, coroutine), name=name, **options))
        return coroutine

    return wrap


def register_cron(name: str, **schedule: Any) -> Callable[[Job], Job]:
    def wrap(coroutine: Job) -> Job:
        CRON_JOBS.append(
            cron(cast(Any, coroutine), name=name, unique=True, run_at_startup=False, **schedule)
        )
        return coroutine

    return wrap


def _load_jobs() -> None:
    # Importing these modules registers their jobs; keep the list explicit.
    import notifier.jobs  # noqa: F401  # registration side effect


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

    return Worker(
        functions=list(JOB_FUNCTIONS),
        cron_jobs=[] if burst else list(CRON_JOBS),
        queue_name=settings.queue_name,
        redis_settings=redis_settings(settings, retries=0),
        # The worker opens (and on close, closes) its own pool; jobs enqueue through resources.
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        burst=burst,
        handle_signals=handle_signals,
        max_jobs=max_jobs or settings.worker_max_jobs,
        job_timeout=600,
        keep_result=60,
        max_tries=1000,  # transient failures retry by the ladder; the sweep is the backstop
        poll_delay=0.05 if burst else 0.2,
        job_serializer=serialize,
        job_deserializer=deserialize,
        # SIGTERM: stop taking jobs and let the ones in flight finish (a send batch takes
        # seconds); whatever is still running after the grace period is recovered by the sweep.
        job_completion_wait=0 if burst else settings.shutdown_grace,
    )


def resources_of(ctx: dict[str, Any]) -> Resources:
    resources: Resources = ctx["resources"]
    return resources
