"""create_app(settings): the aiohttp application: middlewares, resources, routes and CORS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp_cors
from aiohttp import web

from notifier.core.concepts import warm_vocabulary
from notifier.handlers.bodies import BODY_TIMEOUT
from notifier.handlers.middleware import (
    RESOURCES,
    error_middleware,
    metrics_middleware,
    request_id_middleware,
    security_headers_middleware,
)
from notifier.handlers.ops import metrics_listener
from notifier.handlers.routes import HANDLER_MODULES, routes_for
from notifier.handlers.signed import LARGE_BODY_GATE
from notifier.resources import Resources, open_resources
from notifier.settings import Settings


def create_app(
    settings: Settings, resources: Resources | None = None, *, serve_metrics: bool = False
) -> web.Application:
    """Build the app; pass `resources` to share them (dev mode, tests), else it opens its own.
    `serve_metrics`: also serve /metrics on NOTIFIER_METRICS_BIND (`notifier web` and `dev`)."""
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

    app[BODY_TIMEOUT] = settings.body_timeout
    app[LARGE_BODY_GATE] = asyncio.Semaphore(settings.large_bodies_at_once)
    app.cleanup_ctx.append(resources_ctx)
    app.on_startup.append(_load_vocabulary)
    if serve_metrics:
        app.cleanup_ctx.append(metrics_listener(settings))
    app.router.add_routes(routes_for(settings))
    _allow_cors(app, settings)
    return app


async def _load_vocabulary(app: web.Application) -> None:
    """The MeSH vocabulary and its derived tables, once, before the first request (off the event
    loop): otherwise the first signup or suggestion would wait for them."""
    await asyncio.to_thread(warm_vocabulary)


def _allow_cors(app: web.Application, settings: Settings) -> None:
    """fetch() from the website's own origins, for the paths handler modules list in CORS_PATHS."""
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]  # untyped library
        allow_credentials=False,  # nothing public uses cookies
        allow_headers=("Content-Type", "Accept"),
        expose_headers=("Retry-After",),
        allow_methods=("GET", "POST"),  # each path answers only the methods it routes
    )
    cors = aiohttp_cors.setup(
        app, defaults={origin.rstrip("/"): options for origin in settings.allowed_origins}
    )
    paths = {path for module in HANDLER_MODULES for path in getattr(module, "CORS_PATHS", ())}
    for route in list(app.router.routes()):
        if route.resource is not None and route.resource.canonical in paths:
            cors.add(route)
