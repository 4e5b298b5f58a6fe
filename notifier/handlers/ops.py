"""Operator endpoints: Prometheus metrics of this process, with the queue depth read at scrape."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from notifier.handlers.middleware import res
from notifier.metrics import QUEUE_DEPTH, REGISTRY

OPENAPI_PATHS = {
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
        }
    },
}


async def metrics(request: web.Request) -> web.Response:
    r = res(request)
    QUEUE_DEPTH.set(await r.redis.zcard(r.settings.queue_name))
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
