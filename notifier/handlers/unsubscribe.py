"""Unsubscribe links: GET shows one button, POST unsubscribes (RFC 8058 one-click included)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from sqlalchemy import select

from notifier.core import preferences
from notifier.core.tokens import Link, TokenInvalid, revoked
from notifier.data.models import Subscriber, Subscription
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
                "410": error_doc("a link its subscriber withdrew", html=True),
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
                "410": error_doc("a link its subscriber withdrew; nothing changed", html=True),
            },
        },
    }
}


async def unsubscribe_page(request: web.Request) -> web.Response:
    r = res(request)
    link = await _usable_link(request)
    if not isinstance(link, int):
        return link
    async with r.sessions.begin() as session:
        sub = await session.get(Subscription, link)
    if sub is None or sub.status == "unsubscribed":
        return done(request, r, sub.label if sub else None)
    page = r.templates.get_template("pages/unsubscribe.html").render(
        label=sub.label, action=request.path, **_manage_link_form(request)
    )
    return web.Response(text=page, content_type="text/html")


async def unsubscribe(request: web.Request) -> web.Response:
    r = res(request)
    link = await _usable_link(request)
    if not isinstance(link, int):
        return link
    via: preferences.Via = "link" if await _from_our_page(request) else "one_click"
    async with r.sessions.begin() as session:  # committed before the answer
        result = await preferences.unsubscribe(session, link, via)
    return done(request, r, result.label)


def read_token(request: web.Request) -> Link | None:
    try:
        return res(request).tokens.read_unsubscribe_link(request.match_info["token"])
    except TokenInvalid:
        return None


async def _usable_link(request: web.Request) -> int | web.Response:
    """The subscription id of a genuine token its subscriber has not revoked, else the page."""
    link = read_token(request)
    if link is None:
        return not_found(request)
    async with res(request).sessions() as session:
        revoked_at = await session.scalar(
            select(Subscriber.tokens_revoked_at)
            .join(Subscription, Subscription.subscriber_id == Subscriber.id)
            .where(Subscription.id == link.id)
        )
    if revoked(link, revoked_at):
        return withdrawn(request)
    return link.id


def _manage_link_form(request: web.Request) -> dict[str, str]:
    """The "mail me a link to manage my alerts" button: posts this token to POST /v1/manage."""
    return {"manage_link_action": "/v1/manage", "token": request.match_info["token"]}


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


def done(request: web.Request, r: Resources, label: str | None) -> web.Response:
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"status": "unsubscribed"})
    page = r.templates.get_template("pages/unsubscribed.html").render(
        label=label, site_name=r.settings.site_name, **_manage_link_form(request)
    )
    return web.Response(text=page, content_type="text/html")


def withdrawn(request: web.Request) -> web.Response:
    """A genuine link its subscriber withdrew (revoked): 410, saying so."""
    message = "this link was withdrawn; use the one in a newer mail from us"
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"error": message}, status=410)
    page = (
        res(request)
        .templates.get_template("pages/error.html")
        .render(status=410, message=message, fields={}, home=None)
    )
    return web.Response(status=410, text=page, content_type="text/html")


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
