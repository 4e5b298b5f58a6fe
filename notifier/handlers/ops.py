"""Prometheus metrics of this process, never public: on a listener of their own
(NOTIFIER_METRICS_BIND, loopback by default) and, on the public port, only with the admin token.
The queue depth and the live workers are read from Redis at scrape."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from notifier.data import heartbeat
from notifier.handlers.auth import require_admin
from notifier.handlers.middleware import RESOURCES, res
from notifier.handlers.openapi import error_response as openapi_error
from notifier.metrics import QUEUE_DEPTH, REGISTRY, WORKERS_ALIVE
from notifier.resources import Resources
from notifier.settings import Settings, parse_bind

log = logging.getLogger("notifier.web")

OPENAPI_PATHS = {
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format), with the admin token; "
            "also served without it on NOTIFIER_METRICS_BIND (loopback by default)",
            "security": [{"admin": []}],
            "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {}}},
                "401": openapi_error("admin token required"),
            },
        }
    },
}


async def exposition(r: Resources) -> web.Response:
    try:
        QUEUE_DEPTH.set(await r.redis.zcard(r.settings.queue_name))
        WORKERS_ALIVE.set(len(await heartbeat.alive(r.redis, r.settings.queue_name)))
    except (RedisError, OSError):
        log.warning("metrics: Redis unreachable, queue depth and workers not refreshed")
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def metrics(request: web.Request) -> web.Response:
    require_admin(request)  # the public port: for the operator's Prometheus only
    return await exposition(res(request))


def metrics_listener(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for `notifier web`: /metrics, without a token, on the first free port
    of NOTIFIER_METRICS_BIND (several web processes on one host take one port each); none free:
    one warning, and the metrics stay reachable on the public port with the admin token."""

    async def listener(app: web.Application) -> AsyncIterator[None]:
        bind = parse_bind(settings.metrics_bind)
        if bind is None:
            yield
            return
        host, ports = bind

        async def scrape(request: web.Request) -> web.Response:
            return await exposition(app[RESOURCES])

        side = web.Application()
        side.router.add_get("/metrics", scrape)
        runner = web.AppRunner(side, access_log=None)
        await runner.setup()
        bound = None
        for port in ports:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError:
                continue
            bound = port
            break
        if bound is None:
            log.warning(
                "metrics: no free port in NOTIFIER_METRICS_BIND=%s; served on the public port "
                "with the admin token only",
                settings.metrics_bind,
            )
        else:
            log.info("metrics on http://%s:%d/metrics", host, bound)
        try:
            yield
        finally:
            await runner.cleanup()

    return listener
