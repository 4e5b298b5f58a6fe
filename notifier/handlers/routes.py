"""The whole route table: every path the service answers, and the handler behind it."""

from __future__ import annotations

from aiohttp import web

from notifier.handlers import (
    admin,
    conditions,
    confirm,
    demo,
    events,
    health,
    manage,
    ops,
    studies,
    subscriptions,
    unsubscribe,
)
from notifier.handlers.middleware import res
from notifier.handlers.openapi import build_spec
from notifier.settings import Settings

# Every handler module: its OPENAPI_* go into /openapi.json, its CORS_PATHS take fetch() from the
# website's origins.
HANDLER_MODULES = (
    health,
    ops,
    demo,
    unsubscribe,
    manage,
    admin,
    subscriptions,
    conditions,
    confirm,
    events,
    studies,
)


async def openapi_json(request: web.Request) -> web.Response:
    settings = res(request).settings
    spec = build_spec(HANDLER_MODULES, settings.public_base, dev=not settings.is_production)
    return web.json_response(spec)


ROUTES: list[web.RouteDef] = [
    web.get("/openapi.json", openapi_json),
    web.get("/healthz", health.healthz),
    web.get("/readyz", health.readyz),
    web.get("/metrics", ops.metrics),
    web.get("/static/notifier-form.js", demo.form_script),
    web.get("/favicon.ico", demo.favicon),
    web.get("/demo/study", demo.demo_study),
    web.get("/demo/condition", demo.demo_condition),
    web.get("/demo/site", demo.demo_site),
    web.get("/v1/unsubscribe/{token}", unsubscribe.unsubscribe_page),
    web.post("/v1/unsubscribe/{token}", unsubscribe.unsubscribe),
    web.get("/v1/resubscribe/{token}", unsubscribe.resubscribe_page),
    web.post("/v1/resubscribe/{token}", unsubscribe.resubscribe),
    web.get("/v1/manage/{token}", manage.manage_page),
    web.post("/v1/manage/{token}", manage.manage_change),
    web.post("/v1/manage", manage.request_link),
    web.get("/v1/admin/suppressions", admin.list_suppressions),
    web.post("/v1/admin/suppressions", admin.add_suppression),
    web.delete("/v1/admin/suppressions", admin.remove_suppression),
    web.post("/v1/bounces", admin.bounces),
    web.get("/v1/admin/subscribers", admin.export_subscriber),
    web.delete("/v1/admin/subscribers", admin.erase_subscriber),
    web.post("/v1/subscriptions", subscriptions.create_subscription),
    web.get("/v1/conditions", conditions.suggest_conditions),
    web.get(subscriptions.CHECK_INBOX, subscriptions.check_inbox),
    web.get("/v1/confirm/{token}", confirm.confirm_page),
    web.post("/v1/confirm/{token}", confirm.confirm),
    web.post("/v1/events", events.post_events),
    web.get(r"/v1/admin/events/{event_id:.{1,200}}", events.event_progress),
    web.post("/v1/studies", studies.post_studies),
    web.get(f"/v1/studies/{{nct_id:{studies.NCT_PATTERN}}}", studies.get_study),
]


def routes_for(settings: Settings) -> list[web.RouteDef]:
    """The routes this process serves: the demo pages only in dev mode (and so in its spec)."""
    if not settings.is_production:
        return ROUTES
    return [route for route in ROUTES if route.path not in demo.DEV_ONLY_PATHS]
