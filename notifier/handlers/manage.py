"""Preference centre: list and change one address's alerts, and mail a manage link on request."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator

from notifier.core import preferences
from notifier.core.tokens import TokenInvalid
from notifier.data.models import Subscriber, Subscription
from notifier.handlers.bodies import JSON, read_fields, read_json, single_values
from notifier.handlers.middleware import client_ip, error_response, res
from notifier.handlers.openapi import SIGNUP_EMAIL_PATTERN
from notifier.handlers.openapi import error_response as openapi_error
from notifier.handlers.unsubscribe import not_found
from notifier.resources import Resources

# The website may ask for a manage link with fetch() as well as with a plain form.
CORS_PATHS = ("/v1/manage",)


class ManageAction(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    action: Literal["unsubscribe", "unsubscribe_all", "frequency", "pause", "resume"]
    subscription: int | None = Field(default=None, gt=0, le=2**63 - 1)  # a BIGINT id
    frequency: Literal["instant", "daily", "weekly"] | None = None


class ManageLinkRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    email: str = Field(
        min_length=3, max_length=320, json_schema_extra={"pattern": SIGNUP_EMAIL_PATTERN}
    )

    @field_validator("email")
    @classmethod
    def _deliverable_shape(cls, value: str) -> str:
        try:
            return validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(str(exc)) from exc


_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_LISTING = {
    "description": "the preference centre (HTML), or the subscriptions as JSON",
    "content": {
        "text/html": {},
        "application/json": {"schema": {"$ref": "#/components/schemas/ManageListing"}},
    },
}
_ACTION_BODY = {"schema": {"$ref": "#/components/schemas/ManageAction"}}
OPENAPI_SCHEMAS: dict[str, Any] = {
    "ManageAction": ManageAction.model_json_schema(),
    "ManageLinkRequest": ManageLinkRequest.model_json_schema(),
    "ManageListing": {
        "type": "object",
        "properties": {
            "message": {"type": ["string", "null"]},
            "subscriptions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "kind": {"enum": ["study", "condition"]},
                        "label": {"type": "string"},
                        "status": {"enum": ["pending", "confirmed", "unsubscribed"]},
                        "frequency": {"enum": ["instant", "daily", "weekly"]},
                        "paused": {"type": "boolean"},
                    },
                },
            },
        },
    },
}
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/manage/{token}": {
        "get": {
            "summary": "Preference centre: every subscription of the address; changes nothing",
            "parameters": [_TOKEN],
            "responses": {
                "200": _LISTING,
                "404": openapi_error("tampered or unknown token", html=True),
            },
        },
        "post": {
            "summary": "Unsubscribe one or all, change frequency, pause or resume",
            "parameters": [_TOKEN],
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": _ACTION_BODY,
                    "application/json": _ACTION_BODY,
                },
            },
            "responses": {
                "200": _LISTING,
                "404": openapi_error(
                    "tampered token, or a subscription of another address", html=True
                ),
                "413": openapi_error("body too large"),
                "422": openapi_error("invalid action or not possible in its state", html=True),
            },
        },
    },
    "/v1/manage": {
        "post": {
            "summary": "Mail a manage link; the same answer whatever the address",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ManageLinkRequest"}
                    },
                    "application/x-www-form-urlencoded": {
                        "schema": {"$ref": "#/components/schemas/ManageLinkRequest"}
                    },
                },
            },
            "responses": {
                "202": {
                    "description": "sent if the address has alerts (form posts get a page)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"const": "sent"}},
                            }
                        },
                        "text/html": {},
                    },
                },
                "413": openapi_error("body too large"),
                "422": openapi_error("invalid address", html=True),
                "429": openapi_error("too many requests from this network; see Retry-After"),
            },
        },
    },
}


async def manage_page(request: web.Request) -> web.Response:
    subscriber_id = _read_token(request)
    if subscriber_id is None:
        return not_found(request)
    return await _render(request, subscriber_id, None)


async def manage_change(request: web.Request) -> web.Response:
    r = res(request)
    subscriber_id = _read_token(request)
    if subscriber_id is None:
        return not_found(request)
    form = ManageAction.model_validate(await _body(request))
    try:
        async with r.sessions.begin() as session:
            message = await preferences.change(
                session, subscriber_id, form.action, form.subscription, form.frequency
            )
    except preferences.NotYours:
        return error_response(request, 404, "no such subscription for this address")
    except preferences.NotAllowed as exc:
        return error_response(request, 422, "invalid input", {"action": str(exc)})
    return await _render(request, subscriber_id, message)


async def request_link(request: web.Request) -> web.Response:
    data = ManageLinkRequest.model_validate(await _body(request))
    retry_after = await preferences.request_manage_link(
        res(request), client_ip(request), data.email
    )
    if retry_after is not None:
        response = error_response(request, 429, "too many requests, try again later")
        response.headers["Retry-After"] = str(retry_after)
        return response
    if request.content_type == "application/json":
        return web.json_response({"status": "sent"}, status=202)
    page = res(request).templates.get_template("pages/manage.html").render(mode="sent")
    return web.Response(status=202, text=page, content_type="text/html")


def _read_token(request: web.Request) -> int | None:
    try:
        return res(request).tokens.read_manage(request.match_info["token"])
    except TokenInvalid:
        return None


async def _body(request: web.Request) -> Any:
    """JSON (None when broken: validation answers 422), or form or multipart fields, one value
    per name (BodyError: 400/415)."""
    if request.content_type == JSON:
        return await read_json(request)
    return single_values(await read_fields(request))


async def _render(request: web.Request, subscriber_id: int, message: str | None) -> web.Response:
    r: Resources = res(request)
    async with r.sessions.begin() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        subs: list[Subscription] = (
            await preferences.subscriptions_of(session, subscriber_id) if subscriber else []
        )
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"message": message, "subscriptions": [_json(s) for s in subs]})
    page = r.templates.get_template("pages/manage.html").render(
        mode="list",
        message=message,
        email=subscriber.email if subscriber else "",
        subscriptions=subs,
        action=request.path,
        frequency_words=preferences.FREQUENCY_WORDS,
    )
    return web.Response(text=page, content_type="text/html")


def _json(sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "kind": sub.kind,
        "label": sub.label,
        "status": sub.status,
        "frequency": sub.frequency,
        "paused": sub.paused,
    }
