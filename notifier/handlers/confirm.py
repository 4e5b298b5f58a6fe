"""GET /v1/confirm/{token} shows a page with one button (changes nothing); POST confirms."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from notifier.core.confirmation import (
    AlreadyConfirmed,
    LinkUnusable,
    confirm_link,
    pending_for_link,
)
from notifier.core.signup import Evidence
from notifier.core.tokens import TokenExpired, TokenInvalid
from notifier.handlers.bodies import FORM, JSON, BodyError, decode_body, read_raw
from notifier.handlers.middleware import client_ip, error_response, res, site_home
from notifier.handlers.openapi import error_response as error_doc
from notifier.mail.labels import status_label
from notifier.metrics import CONFIRMATIONS


def _page(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    settings = res(request).settings
    html = (
        res(request)
        .templates.get_template(f"pages/{name}.html")
        .render(site_name=settings.site_name, home=site_home(request), **context)
    )
    return web.Response(status=status, text=html, content_type="text/html")


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _unusable(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, TokenInvalid):
        return error_response(request, 404, "link not recognised; check it was copied whole")
    if _wants_json(request):
        return error_response(request, 410, "link expired or already used; sign up again")
    if isinstance(exc, AlreadyConfirmed):  # a reused link: they are subscribed, say so
        return _page(request, "already_confirmed", subscriptions=exc.items)
    return _page(request, "expired", 410)


def requested_ids(data: dict[str, Any]) -> list[int] | None:
    """The `subscription` ids the page listed (form) or `subscriptions` (JSON); None = all."""
    values = data.get("subscription", data.get("subscriptions"))
    if values is None:
        return None
    if not isinstance(values, list) or not values or len(values) > 100:
        raise BodyError(400, "subscriptions must be a list of 1 to 100 ids")
    # A digit string from a form; JSON's 2.0 is the integer 2 (JSON Schema agrees).
    ids = [
        int(v)
        if (isinstance(v, str) and v.isdigit()) or (isinstance(v, float) and v.is_integer())
        else v
        for v in values
    ]
    if not all(type(i) is int and 0 < i < 2**63 for i in ids):
        raise BodyError(400, "subscription ids must be positive integers")
    return ids


async def confirm_page(request: web.Request) -> web.Response:
    try:
        items = await pending_for_link(res(request), request.match_info["token"])
    except (TokenInvalid, TokenExpired, LinkUnusable) as exc:
        return _unusable(request, exc)
    return _page(
        request, "confirm", subscriptions=items, action=request.path, status_label=status_label
    )


async def confirm(request: web.Request) -> web.Response:
    try:
        data = decode_body(request.content_type, await read_raw(request), allow_empty=True)
        ids = requested_ids(data)
    except BodyError as exc:
        return error_response(request, exc.status, exc.message)
    evidence = Evidence.of(client_ip(request), request.headers.get("User-Agent"), None)
    try:
        items = await confirm_link(res(request), request.match_info["token"], ids, evidence)
    except (TokenInvalid, TokenExpired, LinkUnusable) as exc:
        return _unusable(request, exc)
    CONFIRMATIONS.inc(len(items))
    if _wants_json(request):
        return web.json_response(
            {"status": "confirmed", "subscriptions": [item.as_json() for item in items]}
        )
    return _page(request, "confirmed", subscriptions=items)


_TOKEN = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}]
_ITEM = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "kind": {"enum": ["study", "condition"]},
        "label": {"type": "string"},
        "mesh_id": {"type": ["string", "null"]},
        "broad": {"type": "boolean"},
        "frequency": {"enum": ["instant", "daily", "weekly"]},
        "title": {"type": ["string", "null"], "description": "a study's title, when known"},
        "status": {"type": ["string", "null"], "description": "a study's overall status"},
    },
}
_HTML: dict[str, Any] = {"text/html": {}}
_IDS = {
    "type": "array",
    "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    "minItems": 1,
    "maxItems": 100,
}

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/confirm/{token}": {
        "get": {
            "summary": "Confirmation page: lists what would be confirmed, one POST button",
            "description": "Changes nothing, so link scanners cannot confirm.",
            "parameters": _TOKEN,
            "responses": {
                "200": {"description": "HTML page with a form", "content": _HTML},
                "404": error_doc("link not recognised", html=True),
                "410": error_doc("expired or used: sign up again", html=True),
            },
        },
        "post": {
            "summary": "Confirm the pending subscriptions of the address (single use)",
            "parameters": _TOKEN,
            "requestBody": {
                "required": False,
                "content": {
                    FORM: {
                        "schema": {
                            "type": "object",
                            "properties": {"subscription": _IDS},
                        }
                    },
                    JSON: {
                        "schema": {
                            "type": "object",
                            "properties": {"subscriptions": _IDS},
                        }
                    },
                },
            },
            "responses": {
                "200": {
                    "description": "confirmed: HTML page, or JSON with Accept: application/json",
                    "content": {
                        **_HTML,
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "status": {"const": "confirmed"},
                                    "subscriptions": {"type": "array", "items": _ITEM},
                                },
                            }
                        },
                    },
                },
                "400": error_doc("body cannot be decoded, or not a list of ids"),
                "404": error_doc("link not recognised", html=True),
                "410": error_doc("expired or already used: sign up again", html=True),
                "413": error_doc("body too large"),
                "415": error_doc("not a form or JSON"),
            },
        },
    },
}
