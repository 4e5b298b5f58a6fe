"""Unsubscribe links: GET shows one button, POST unsubscribes (RFC 8058 one-click included)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from notifier.core import preferences
from notifier.core.tokens import TokenInvalid
from notifier.data.models import Subscription
from notifier.handlers.bodies import FORM, peek_body
from notifier.handlers.middleware import res
from notifier.handlers.openapi import error_response as error_doc
from notifier.resources import Resources

PEEK_BYTES = 1024  # "via=page" is all our page sends
_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_NOT_FOUND = error_doc("tampered or unknown token; nothing changed", html=True)
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/unsubscribe/{token}": {
        "get": {
            "summary": "A page with one button that unsubscribes; changes nothing",
            "parameters": [_TOKEN],
            "responses": {
                "200": {"description": "the page", "content": {"text/html": {}}},
                "404": _NOT_FOUND,
            },
        },
        "post": {
            "summary": "Unsubscribe (RFC 8058 one-click); idempotent, no cookie or CSRF token",
            "parameters": [_TOKEN],
            "requestBody": {
                "required": False,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "properties": {"List-Unsubscribe": {"const": "One-Click"}},
                        }
                    },
                    "multipart/form-data": {"schema": {"type": "object"}},
                },
            },
            "responses": {
                "200": {
                    "description": "unsubscribed (also when it already was); never a redirect",
                    "content": {
                        "text/html": {},
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"const": "unsubscribed"}},
                            }
                        },
                    },
                },
                "404": _NOT_FOUND,
            },
        },
    }
}


async def unsubscribe_page(request: web.Request) -> web.Response:
    r = res(request)
    subscription_id = read_token(request)
    if subscription_id is None:
        return not_found(request)
    async with r.sessions.begin() as session:
        sub = await session.get(Subscription, subscription_id)
    if sub is None or sub.status == "unsubscribed":
        return done(request, r, sub.label if sub else None, sub.subscriber_id if sub else None)
    page = r.templates.get_template("pages/unsubscribe.html").render(
        label=sub.label,
        action=request.path,
        manage_url=r.mail.manage_url(sub.subscriber_id),
    )
    return web.Response(text=page, content_type="text/html")


async def unsubscribe(request: web.Request) -> web.Response:
    r = res(request)
    subscription_id = read_token(request)
    if subscription_id is None:
        return not_found(request)
    via: preferences.Via = "link" if await _from_our_page(request) else "one_click"
    async with r.sessions.begin() as session:  # committed before the answer
        result = await preferences.unsubscribe(session, subscription_id, via)
    return done(request, r, result.label, result.subscriber_id)


def read_token(request: web.Request) -> int | None:
    try:
        return res(request).tokens.read_unsubscribe(request.match_info["token"])
    except TokenInvalid:
        return None


async def _from_our_page(request: web.Request) -> bool:
    """Our page's button sends via=page; anything else (mail clients' one-click) is one_click.

    RFC 8058: whatever the body, the POST unsubscribes. So the body is only peeked at (its
    first bytes, within the body timeout) and never parsed in a way that can fail: our page
    posts a urlencoded form; a multipart, damaged, slow or huge body is simply one-click.
    """
    if request.content_type != FORM:
        return False
    raw = await peek_body(request, PEEK_BYTES)
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return fields.get("via") == ["page"]


def done(
    request: web.Request, r: Resources, label: str | None, subscriber_id: int | None
) -> web.Response:
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"status": "unsubscribed"})
    page = r.templates.get_template("pages/unsubscribed.html").render(
        label=label,
        manage_url=r.mail.manage_url(subscriber_id) if subscriber_id else None,
        site_name=r.settings.site_name,
    )
    return web.Response(text=page, content_type="text/html")


def not_found(request: web.Request) -> web.Response:
    """A page for people (mail links), JSON only for clients that ask for it."""
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"error": "unknown or damaged link"}, status=404)
    page = (
        res(request)
        .templates.get_template("pages/error.html")
        .render(status=404, message="this link is unknown or damaged", fields={}, home=None)
    )
    return web.Response(status=404, text=page, content_type="text/html")
