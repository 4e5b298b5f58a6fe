"""POST /v1/subscriptions (JSON or a plain HTML form) and the built-in "check your inbox" page."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from notifier.core.signup import Evidence, sign_up
from notifier.core.signup_input import SignupRequest, parse_signup
from notifier.handlers.bodies import FORM, JSON, BodyError, decode_body, read_raw
from notifier.handlers.bodies import single_values as form_values
from notifier.handlers.middleware import (
    client_ip,
    error_response,
    page_url,
    refuse_if_ip_limited,
    res,
    site_home,
)
from notifier.handlers.openapi import SIGNUP_EMAIL_PATTERN
from notifier.handlers.openapi import error_response as error_doc
from notifier.metrics import SIGNUPS

# Paths a website may call with fetch() from its allowed origins (app.py wires CORS for them).
CORS_PATHS = ("/v1/subscriptions",)
CHECK_INBOX = "/v1/subscriptions/check-inbox"
PENDING = {"status": "pending"}


async def create_subscription(request: web.Request) -> web.Response:
    r = res(request)
    if (refusal := await refuse_if_ip_limited(request)) is not None:
        SIGNUPS.labels(result="ip_limited").inc()
        return refusal
    is_form = request.content_type == FORM
    try:
        data = decode_body(request.content_type, await read_raw(request))
        if is_form:  # fields signup ignores anyway may repeat; its own may not (but changes)
            changes = data.pop("changes", None)
            data = form_values({k: v for k, v in data.items() if k in SignupRequest.model_fields})
            if changes:
                data["changes"] = ",".join(changes)
        req = parse_signup(data, r.settings.allowed_origins)
    except BodyError as exc:
        SIGNUPS.labels(result="invalid").inc()
        return error_response(request, exc.status, exc.message)
    except ValidationError:
        SIGNUPS.labels(result="invalid").inc()
        raise
    headers = request.headers
    evidence = Evidence.of(
        client_ip(request), headers.get("User-Agent"), req.source or headers.get("Referer")
    )
    await sign_up(r, req, evidence)
    SIGNUPS.labels(result="accepted").inc()  # never the outcome: see notifier.metrics
    # The same answer whatever happened: it must not tell whether the address is known.
    if is_form:
        location = req.redirect or page_url(request, f"{r.settings.public_base}{CHECK_INBOX}")
        return web.Response(status=303, headers={"Location": location})
    return web.json_response(PENDING, status=202)


async def check_inbox(request: web.Request) -> web.Response:
    settings = res(request).settings
    page = res(request).templates.get_template("pages/check_inbox.html")
    return web.Response(
        text=page.render(site_name=settings.site_name, home=site_home(request)),
        content_type="text/html",
    )


_SIGNUP_SCHEMA: dict[str, Any] = {"$ref": "#/components/schemas/SignupRequest"}


def _signup_schema() -> dict[str, Any]:
    """The model's schema with what signup enforces and JSON Schema can say: the address and id
    syntax, a study or a condition or both. (Whether a condition names a condition, a time
    zone exists, or a redirect is on an allowed origin is checked by the server: 422.)"""
    schema = SignupRequest.model_json_schema()
    props = schema["properties"]
    blank = {"type": "string", "pattern": "^ *$"}  # an HTML form's empty field: not given
    props["email"].update(pattern=SIGNUP_EMAIL_PATTERN, maxLength=254)
    props["study"]["anyOf"][0]["pattern"] = "^ *([Nn][Cc][Tt][0-9]{8})? *$"
    props["mesh_id"]["anyOf"][0]["pattern"] = "^ *([DdCc]([0-9]{6}|[0-9]{9}))? *$"
    props["frequency"] = {
        "anyOf": [{"enum": ["instant", "daily", "weekly"]}, blank],
        "default": "instant",
    }
    props["website"]["maxLength"] = 1000
    schema["anyOf"] = [
        {"required": ["study"], "properties": {"study": {"type": "string"}}},
        {"required": ["condition"], "properties": {"condition": {"type": "string"}}},
    ]
    return schema


OPENAPI_SCHEMAS = {"SignupRequest": _signup_schema()}

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/subscriptions": {
        "post": {
            "summary": "Sign up for alerts about a study, a condition, or both (double opt-in)",
            "description": (
                "Records a pending subscription (two when both a study and a condition are "
                'given: the study page\'s "this study, and new studies for its condition") '
                "and mails one confirmation link (at most one "
                "per address per interval; the link's page lists every pending subscription of "
                "the address). The answer is the same for new, pending, confirmed, "
                "unsubscribed and suppressed addresses. Rate-limited per IP."
            ),
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _SIGNUP_SCHEMA}, FORM: {"schema": _SIGNUP_SCHEMA}},
            },
            "responses": {
                "202": {
                    "description": "JSON posts: accepted (whatever the address's state)",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"const": "pending"}},
                            }
                        }
                    },
                },
                "303": {"description": "form posts: to `redirect` or the check-inbox page"},
                "400": error_doc("body cannot be decoded"),
                "413": error_doc("body too large"),
                "415": error_doc("not JSON or a urlencoded form"),
                "422": error_doc("invalid fields"),
                "429": error_doc("too many requests from this IP; see Retry-After"),
                "503": error_doc("database or Redis unavailable; retry"),
            },
        }
    },
    CHECK_INBOX: {
        "get": {
            "summary": "Page shown after a form signup",
            "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
        }
    },
}
