"""create_app(settings): the aiohttp application, its resources and the whole route table."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from notifier.handlers import admin, events, health, manage, ops, unsubscribe
from notifier.openapi import build_spec
from notifier.resources import Resources, open_resources
from notifier.settings import Settings
from notifier.web import (
    RESOURCES,
    error_middleware,
    metrics_middleware,
    request_id_middleware,
    security_headers_middleware,
)

# Every handler module: its `routes` go in the route table, its OPENAPI_* into /openapi.json.
HANDLER_MODULES = (health, ops, unsubscribe, manage, admin, events)


async def openapi_json(request: web.Request) -> web.Response:
    settings = request.app[RESOURCES].settings
    return web.json_response(build_spec(HANDLER_MODULES, settings.public_base))


def create_app(settings: Settings, resources: Resources | None = None) -> web.Application:
    """Build the app; pass `resources` to share them (dev mode, tests), else it opens its own."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            metrics_middleware,
            request_id_middleware,
            security_headers_middleware,
            error_middleware,
        ],
    )

    async def resources_ctx(app: web.Application) -> AsyncIterator[None]:
        if resources is not None:
            app[RESOURCES] = resources
            yield
            return
        async with open_resources(settings) as opened:
            app[RESOURCES] = opened
            yield

    app.cleanup_ctx.append(resources_ctx)
    for module in HANDLER_MODULES:
        app.router.add_routes(module.routes)
    app.router.add_get("/openapi.json", openapi_json)
    return app
