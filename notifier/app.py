"""create_app(settings): the aiohttp application, its resources and the whole route table."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from notifier.handlers import health
from notifier.resources import Resources, open_resources
from notifier.settings import Settings
from notifier.web import (
    RESOURCES,
    error_middleware,
    request_id_middleware,
    security_headers_middleware,
)

ROUTE_TABLES = (health.routes,)


def create_app(settings: Settings, resources: Resources | None = None) -> web.Application:
    """Build the app; pass `resources` to share them (dev mode, tests), else it opens its own."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_id_middleware, security_headers_middleware, error_middleware],
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
    for table in ROUTE_TABLES:
        app.router.add_routes(table)
    return app
