"""Shared web plumbing: app keys, middlewares (errors, request id and access log, security
headers, metrics), helpers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from notifier import logs
from notifier.core import ratelimit
from notifier.core.fields import validation_fields
from notifier.handlers.bodies import BodyError, BodyTimeout
from notifier.handlers.signed import Busy
from notifier.metrics import HTTP_REQUESTS
from notifier.resources import Resources

log = logging.getLogger("notifier.web")
access_log = logging.getLogger("notifier.access")

RESOURCES = web.AppKey("resources", Resources)
REQUEST_ID = web.RequestKey("request_id", str)

# What proxies log for a request whose client hung up before the answer: not a server error.
CLIENT_CLOSED = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def res(request: web.Request) -> Resources:
    return request.app[RESOURCES]


DEMO_SITE = "/demo/site"


def site_home(request: web.Request) -> str | None:
    """Where "back to the site" goes: the website (its first allowed origin); in dev, the demo
    site on whatever address the person opened (the origins point at no real site)."""
    settings = res(request).settings
    if not settings.is_production:
        return DEMO_SITE
    return settings.allowed_origins[0] if settings.allowed_origins else None


def page_url(request: web.Request, url: str) -> str:
    """A link of ours on a page or in a redirect. In dev, relative to the request's own origin:
    `make run` is opened at 127.0.0.1 or localhost alike, and a page's CSP (form-action 'self')
    blocks a redirect to the other one. In production, NOTIFIER_PUBLIC_URL as in mail."""
    settings = res(request).settings
    if settings.is_production or not url.startswith(settings.public_base + "/"):
        return url
    return url.removeprefix(settings.public_base)


def wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept


def error_response(
    request: web.Request, status: int, message: str, fields: dict[str, str] | None = None
) -> web.Response:
    if wants_html(request):
        body = (
            res(request)
            .templates.get_template("pages/error.html")
            .render(status=status, message=message, fields=fields or {}, home=None)
        )
        return web.Response(status=status, text=body, content_type="text/html")
    payload: dict[str, Any] = {"error": message}
    if fields:
        payload["fields"] = fields
    return web.json_response(payload, status=status)


def client_ip(request: web.Request) -> str:
    """The peer address, or the right-most untrusted X-Forwarded-For hop behind trusted proxies."""
    peer = request.remote or "unknown"
    trusted = res(request).settings.trusted_proxies
    if not trusted or not _in_networks(peer, trusted):
        return peer
    # Every header line, in order: a client's own line comes before the one its proxy adds, and
    # reading only the first line would believe the client.
    hops = [h.strip() for h in _joined(request, "X-Forwarded-For").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_networks(hop, trusted):
            return hop
    return peer


def _joined(request: web.Request, name: str) -> str:
    return ",".join(request.headers.getall(name, []))


def arrived_over_https(request: web.Request) -> bool:
    """TLS to us, or to a trusted proxy that says so (the last X-Forwarded-Proto value: the one
    the proxy nearest to us set)."""
    if request.secure:
        return True
    trusted = res(request).settings.trusted_proxies
    if not trusted or not _in_networks(request.remote or "", trusted):
        return False
    protos = [p.strip().lower() for p in _joined(request, "X-Forwarded-Proto").split(",")]
    return bool(protos) and protos[-1] == "https"


def _in_networks(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


def route_template(request: web.Request) -> str:
    """The matched route's template (never the raw path: it may hold a token), or "unmatched"."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests by route template."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED  # the client hung up and aiohttp cancelled the handler
        raise
    finally:
        HTTP_REQUESTS.labels(
            route=route_template(request), method=request.method, status=str(status)
        ).inc()


# Probes and scrapes arrive every few seconds: logged at DEBUG so they do not drown the rest.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id (the caller's X-Request-Id if sane), log lines carry it, and
    write one access line: method, route template, status, duration. Never the path or query."""
    rid = request.headers.get("X-Request-Id", "")
    if not (0 < len(rid) <= 64 and rid.replace("-", "").isalnum()):
        rid = uuid.uuid4().hex
    request[REQUEST_ID] = rid
    # Reset afterwards: requests on one keep-alive connection share the connection's task.
    context = logs.REQUEST_ID.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = rid
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        _access(request, status, (time.perf_counter() - started) * 1000)
        logs.REQUEST_ID.reset(context)
    response.headers["X-Request-Id"] = rid
    return response


def _access(request: web.Request, status: int, ms: float) -> None:
    route = route_template(request)
    if status >= 500:
        level = logging.WARNING
    elif route in QUIET_ROUTES:
        level = logging.DEBUG
    else:
        level = logging.INFO
    access_log.log(
        level,
        "%s %s %d %.1fms",
        request.method,
        route,
        status,
        ms,
        extra={"method": request.method, "route": route, "status": status, "ms": round(ms, 1)},
    )


HSTS = "max-age=31536000"  # a year; no includeSubDomains: the operator's other hosts are theirs
TOKEN_PAGES = ("/v1/confirm/", "/v1/unsubscribe/", "/v1/manage/", "/v1/resubscribe/")


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _secure(request, exc.headers)
        raise
    _secure(request, response.headers)
    return response


def _secure(request: web.Request, headers: Any) -> None:
    secure_defaults(headers)
    if arrived_over_https(request):
        headers.setdefault("Strict-Transport-Security", HSTS)
    if request.path.startswith(TOKEN_PAGES) or request.path.startswith("/v1/admin"):
        headers["Cache-Control"] = "no-store"


def secure_defaults(headers: Any) -> None:
    """The headers every answer carries, whatever the request (even one aiohttp could not
    parse: notifier.handlers.protocol)."""
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error_response(request, 413, "request body too large")
    except BodyError as exc:
        return error_response(request, exc.status, exc.message)
    except BodyTimeout:
        return _closing(
            request, error_response(request, 408, "the request body did not arrive in time")
        )
    except Busy:
        response = error_response(request, 503, "busy with other large bodies, retry shortly")
        response.headers["Retry-After"] = "5"
        return _closing(request, response)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            # Every error is JSON or our HTML page, with a message: aiohttp's own plain-text
            # answers (404, 405, aiohttp_cors's 403) included.
            plain = (exc.text or "") if exc.content_type == "text/plain" else ""
            generic = not plain or plain == f"{exc.status}: {exc.reason}"
            response = error_response(request, exc.status, exc.reason if generic else plain)
            if "Allow" in exc.headers:  # RFC 9110: a 405 names the methods that are allowed
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise
    except ValidationError as exc:
        return error_response(request, 422, "invalid input", validation_fields(exc))
    except (OperationalError, PoolTimeout, DBAPIError, OSError, RedisError) as exc:
        if isinstance(exc, ConnectionResetError) and (
            request.transport is None or request.transport.is_closing()
        ):
            # The client hung up (often while sending its body): no dependency is down, and
            # no one is left to answer. 499, as proxies log it, keeps the 503 count honest.
            log.info("client closed the request: %s", type(exc).__name__)
            return web.Response(status=CLIENT_CLOSED)
        # A dependency is down: say so, let the client retry; never a 500.
        log.warning("dependency unavailable: %s", type(exc).__name__)
        response = error_response(request, 503, "temporarily unavailable, try again shortly")
        response.headers["Retry-After"] = "5"
        return response


def _closing(request: web.Request, response: web.Response) -> web.Response:
    """Close the connection once answered, without lingering to read the rest of the body:
    aiohttp lingers (up to 10 s) only while the request's payload has not ended."""
    response.force_close()
    request.content.feed_eof()
    return response


async def refuse_if_ip_limited(request: web.Request) -> web.Response | None:
    """For public POSTs: a 429 with Retry-After when the client's IP is over its limit."""
    retry_after = await ratelimit.ip_retry_after(res(request), client_ip(request))
    if retry_after is None:
        return None
    response = error_response(request, 429, "too many requests, try again shortly")
    response.headers["Retry-After"] = str(retry_after)
    return response
