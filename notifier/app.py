"""create_app(settings): the aiohttp application, its resources and the whole route table."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp_cors
from aiohttp import web

from notifier.handlers import (
    admin,
    confirm,
    demo,
    events,
    health,
    manage,
    ops,
    subscriptions,
    unsubscribe,
)
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
HANDLER_MODULES = (health, ops, demo, unsubscribe, manage, admin, subscriptions, confirm, events)


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
    _allow_cors(app, settings)
    return app


def _allow_cors(app: web.Application, settings: Settings) -> None:
    """fetch() from the website's own origins, for the paths handler modules list in CORS_PATHS."""
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]  # untyped library
        allow_credentials=False,  # nothing public uses cookies
        allow_headers=("Content-Type", "Accept"),
        expose_headers=("Retry-After",),
        allow_methods=("POST",),
    )
    cors = aiohttp_cors.setup(
        app, defaults={origin.rstrip("/"): options for origin in settings.allowed_origins}
    )
    paths = {path for module in HANDLER_MODULES for path in getattr(module, "CORS_PATHS", ())}
    for route in list(app.router.routes()):
        if route.resource is not None and route.resource.canonical in paths:
            cors.add(route)
