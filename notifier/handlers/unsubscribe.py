"""Unsubscribe links: GET shows one button, POST unsubscribes (RFC 8058 one-click included)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from sqlalchemy import select

from notifier.core import preferences
from notifier.core.confirmation import titles_of
from notifier.core.names import subscription_name
from notifier.core.tokens import Link, TokenExpired, TokenInvalid, revoked
from notifier.data.models import Subscriber, Subscription
from notifier.handlers.bodies import FORM, peek_body
from notifier.handlers.middleware import res, site_home
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
    },
    "/v1/resubscribe/{token}": {
        "get": {
            "summary": "A page with one button that undoes an unsubscribe; changes nothing",
            "description": "The link is on the unsubscribe answer page and lives one day.",
            "parameters": [_TOKEN],
            "responses": {
                "200": {"description": "the page", "content": {"text/html": {}}},
                "404": _NOT_FOUND,
                "410": error_doc("expired, or the subscription changed since", html=True),
            },
        },
        "post": {
            "summary": "Undo the unsubscribe the link was made for (confirmed subscriptions only)",
            "parameters": [_TOKEN],
            "responses": {
                "200": {
                    "description": "subscribed again (also when it already was)",
                    "content": {
                        "text/html": {},
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"const": "confirmed"}},
                            }
                        },
                    },
                },
                "404": _NOT_FOUND,
                "410": error_doc("expired, or the subscription changed since", html=True),
            },
        },
    },
}


async def unsubscribe_page(request: web.Request) -> web.Response:
    r = res(request)
    ids = await _usable_ids(request)
    if not isinstance(ids, list):
        return ids
    async with r.sessions.begin() as session:
        rows = list(
            await session.scalars(
                select(Subscription).where(
                    Subscription.id.in_(ids), Subscription.status != "unsubscribed"
                )
            )
        )
        titles = await titles_of(session, rows)
    if not rows:  # nothing left to end: say what the state is, change nothing
        async with r.sessions.begin() as session:
            result = await preferences.unsubscribe_many(session, [], "link")
        return done(request, r, result)
    page = r.templates.get_template("pages/unsubscribe.html").render(
        names=[subscription_name(row.kind, row.label, titles) for row in rows],
        action=request.path,
        **_manage_link_form(request),
    )
    return web.Response(text=page, content_type="text/html")


async def unsubscribe(request: web.Request) -> web.Response:
    r = res(request)
    ids = await _usable_ids(request)
    if not isinstance(ids, list):
        return ids
    via: preferences.Via = "link" if await _from_our_page(request) else "one_click"
    async with r.sessions.begin() as session:  # committed before the answer
        result = await preferences.unsubscribe_many(session, ids, via)
    return done(request, r, result)


async def _usable_ids(request: web.Request) -> list[int] | web.Response:
    """The subscriptions a genuine link ends, unless their subscriber withdrew the links signed
    before: one (a link in the body), or every one a mail was sent for (its List-Unsubscribe
    header). Else the page to answer with."""
    try:
        ids, signed_at = res(request).tokens.read_unsubscribe_any(request.match_info["token"])
    except TokenInvalid:
        return not_found(request)
    async with res(request).sessions() as session:
        revoked_at = await session.scalar(
            select(Subscriber.tokens_revoked_at)
            .join(Subscription, Subscription.subscriber_id == Subscriber.id)
            .where(Subscription.id.in_(ids))
            .limit(1)
        )
    if revoked(Link(ids[0], signed_at), revoked_at):
        return withdrawn(request)
    return ids


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


def done(request: web.Request, r: Resources, result: preferences.EndedAll) -> web.Response:
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"status": "unsubscribed"})
    ended = []
    for e in result.ended:
        undo = None  # a link relative to this page: it leads to another page, never to mail
        if e.resubscribable and e.unsubscribed_at is not None:
            undo = (
                f"/v1/resubscribe/{r.tokens.resubscribe(e.id, int(e.unsubscribed_at.timestamp()))}"
            )
        ended.append({"name": e.name, "resubscribe_url": undo})
    page = r.templates.get_template("pages/unsubscribed.html").render(
        ended=ended,
        remaining=result.remaining,
        site_name=r.settings.site_name,
        home=site_home(request),
        **_manage_link_form(request),
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


# ---- re-subscribe: undo an unsubscribe from its answer page, within a day ----------------------


async def resubscribe_page(request: web.Request) -> web.Response:
    """One button; changes nothing (a GET never changes a subscription)."""
    r = res(request)
    try:
        subscription_id, _ = r.tokens.read_resubscribe(request.match_info["token"])
    except TokenInvalid:
        return not_found(request)
    except TokenExpired:
        return _resubscribe_gone(request)
    async with r.sessions.begin() as session:
        sub = await session.get(Subscription, subscription_id)
        if sub is None:
            return _resubscribe_gone(request)
        titles = await titles_of(session, [sub])
    page = r.templates.get_template("pages/resubscribe.html").render(
        name=subscription_name(sub.kind, sub.label, titles),
        active=sub.status == "confirmed",
        action=request.path,
        home=site_home(request),
    )
    return web.Response(text=page, content_type="text/html")


async def resubscribe(request: web.Request) -> web.Response:
    r = res(request)
    try:
        subscription_id, unsubscribed_at = r.tokens.read_resubscribe(request.match_info["token"])
    except TokenInvalid:
        return not_found(request)
    except TokenExpired:
        return _resubscribe_gone(request)
    try:
        async with r.sessions.begin() as session:
            name = await preferences.resubscribe(session, subscription_id, unsubscribed_at)
    except preferences.CannotResubscribe:
        return _resubscribe_gone(request)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"status": "confirmed"})
    page = r.templates.get_template("pages/resubscribed.html").render(
        name=name, site_name=r.settings.site_name, home=site_home(request)
    )
    return web.Response(text=page, content_type="text/html")


def _resubscribe_gone(request: web.Request) -> web.Response:
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"error": "link expired or no longer usable"}, status=410)
    r = res(request)
    page = r.templates.get_template("pages/expired.html").render(
        site_name=r.settings.site_name, home=site_home(request), resubscribe=True
    )
    return web.Response(status=410, text=page, content_type="text/html")
