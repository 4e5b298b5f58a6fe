"""Preference centre: list and change one address's alerts, and mail a manage link on request."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import select

from notifier.core import preferences
from notifier.core.concepts import meaning
from notifier.core.confirmation import titles_of
from notifier.core.names import subscription_name
from notifier.core.ratelimit import mailbox_hash
from notifier.core.tokens import Link, TokenInvalid, revoked
from notifier.data.models import Subscriber, Subscription
from notifier.handlers.bodies import JSON, read_fields, read_json, single_values
from notifier.handlers.middleware import client_ip, error_response, res, site_home
from notifier.handlers.openapi import SIGNUP_EMAIL_PATTERN
from notifier.handlers.openapi import error_response as openapi_error
from notifier.handlers.unsubscribe import not_found, withdrawn
from notifier.queue import enqueue_manage_link_request
from notifier.resources import Resources

# The website may ask for a manage link with fetch() as well as with a plain form.
CORS_PATHS = ("/v1/manage",)


class ManageAction(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    action: Literal[
        "unsubscribe", "unsubscribe_all", "frequency", "pause", "resume", "changes", "revoke_links"
    ]
    subscription: int | None = Field(default=None, gt=0, le=2**63 - 1)  # a BIGINT id
    frequency: Literal["instant", "daily", "weekly"] | None = None
    changes: list[str] | None = Field(
        default=None,
        description="action=changes: the plain labels ticked ("
        + ", ".join([*preferences.STUDY_CHOICES, *preferences.CONDITION_CHOICES])
        + ")",
    )


class ManageLinkRequest(BaseModel):
    """An address, or the token of an unsubscribe page's "mail me a link" button."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    unsubscribe_token: str | None = Field(
        default=None, min_length=1, max_length=500, description="an unsubscribe link's token"
    )
    email: str | None = Field(
        default=None,
        min_length=3,
        max_length=320,
        validate_default=True,
        json_schema_extra={"pattern": SIGNUP_EMAIL_PATTERN},
    )

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        # Absent is fine; an explicit null is not a value the spec allows.
        if isinstance(data, dict):
            for name in ("email", "unsubscribe_token"):
                if name in data and data[name] is None:
                    raise ValueError(f"{name} must be a string")
        return data

    @field_validator("email")
    @classmethod
    def _deliverable_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("unsubscribe_token") is None:
                raise ValueError("an email address is required")
            return None
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
    "ManageLinkRequest": {
        "type": "object",
        "properties": {
            "email": {
                "type": "string",
                "minLength": 3,
                "maxLength": 320,
                "pattern": SIGNUP_EMAIL_PATTERN,
            },
            "unsubscribe_token": {
                "type": "string",
                "minLength": 1,
                "maxLength": 500,
                "description": "the token of an unsubscribe page's 'mail me a link' button",
            },
        },
        "anyOf": [
            {"required": ["email"], "properties": {"email": {"type": "string"}}},
            {
                "required": ["unsubscribe_token"],
                "properties": {"unsubscribe_token": {"type": "string"}},
            },
        ],
    },
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
                        "changes": {"type": "array", "items": {"type": "string"}},
                        "meaning": {"type": ["string", "null"]},
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
                "410": openapi_error("a link its subscriber withdrew", html=True),
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
                "410": openapi_error("a link its subscriber withdrew", html=True),
                "400": openapi_error("body cannot be decoded, or a field given twice"),
                "413": openapi_error("body too large"),
                "415": openapi_error("not JSON, a urlencoded form or multipart, or not UTF-8"),
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
                "400": openapi_error("body cannot be decoded, or a field given twice"),
                "413": openapi_error("body too large"),
                "415": openapi_error("not JSON, a urlencoded form or multipart, or not UTF-8"),
                "422": openapi_error("invalid address", html=True),
                "429": openapi_error("too many requests from this network; see Retry-After"),
            },
        },
    },
}


async def manage_page(request: web.Request) -> web.Response:
    subscriber_id = await _usable_token(request)
    if not isinstance(subscriber_id, int):
        return subscriber_id
    return await _render(request, subscriber_id, None)


async def manage_change(request: web.Request) -> web.Response:
    r = res(request)
    subscriber_id = await _usable_token(request)
    if not isinstance(subscriber_id, int):
        return subscriber_id
    form = ManageAction.model_validate(await _body(request, ManageAction))
    if form.action == "revoke_links":
        return await _revoke(request, subscriber_id)
    try:
        async with r.sessions.begin() as session:
            message = await preferences.change(
                session,
                subscriber_id,
                form.action,
                form.subscription,
                form.frequency,
                form.changes,
            )
    except preferences.NotYours:
        return error_response(request, 404, "no such subscription for this address")
    except preferences.NotAllowed as exc:
        return error_response(request, 422, "invalid input", {"action": str(exc)})
    return await _render(request, subscriber_id, message)


async def request_link(request: web.Request) -> web.Response:
    data = ManageLinkRequest.model_validate(await _body(request, ManageLinkRequest))
    email = data.email or await _address_of(request, data.unsubscribe_token)
    # An unknown or withdrawn token is answered like an unknown address: the same, no mail.
    retry_after = await preferences.request_manage_link(
        res(request), client_ip(request), email or f"nobody@{UNKNOWN}"
    )
    if retry_after is not None:
        response = error_response(request, 429, "too many requests, try again later")
        response.headers["Retry-After"] = str(retry_after)
        return response
    if request.content_type == "application/json":
        return web.json_response({"status": "sent"}, status=202)
    page = res(request).templates.get_template("pages/manage.html").render(mode="sent")
    return web.Response(status=202, text=page, content_type="text/html")


UNKNOWN = "unknown.invalid"  # RFC 2606: no such address can exist


async def _address_of(request: web.Request, token: str | None) -> str | None:
    """The address behind an unsubscribe page's token, if the token is genuine and not
    withdrawn. (The page's owner asked; the link goes to the address, never to the page.)"""
    try:
        ids, signed_at = res(request).tokens.read_unsubscribe_any(token or "")
    except TokenInvalid:
        return None
    link = Link(ids[0], signed_at)  # a mail's subscriptions are all one address's
    async with res(request).sessions() as session:
        row = (
            await session.execute(
                select(Subscriber.email, Subscriber.tokens_revoked_at)
                .join(Subscription, Subscription.subscriber_id == Subscriber.id)
                .where(Subscription.id == link.id)
            )
        ).one_or_none()
    if row is None or revoked(link, row.tokens_revoked_at):
        return None
    return str(row.email)


async def _usable_token(request: web.Request) -> int | web.Response:
    """The subscriber id of a genuine manage token not withdrawn since, else the answer."""
    try:
        link = res(request).tokens.read_manage_link(request.match_info["token"])
    except TokenInvalid:
        return not_found(request)
    async with res(request).sessions() as session:
        revoked_at = await session.scalar(
            select(Subscriber.tokens_revoked_at).where(Subscriber.id == link.id)
        )
    if revoked(link, revoked_at):
        return withdrawn(request)
    return link.id


async def _revoke(request: web.Request, subscriber_id: int) -> web.Response:
    """Withdraw every link mailed so far (this page's too), and mail a fresh manage link."""
    r = res(request)
    async with r.sessions.begin() as session:
        email = await preferences.revoke_links(session, subscriber_id)
    if email is not None:
        await enqueue_manage_link_request(r, r.email_hash(email), mailbox_hash(r, email))
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"message": "links withdrawn", "subscriptions": []})
    page = r.templates.get_template("pages/manage.html").render(mode="revoked")
    return web.Response(text=page, content_type="text/html")


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    """JSON (None when broken: validation answers 422), or form or multipart fields: the
    model's own fields once each (BodyError: 400/415), other names ignored."""
    if request.content_type == JSON:
        return await read_json(request)
    fields = await read_fields(request)
    changes = fields.pop("changes", None)  # ticked boxes: the one field that repeats
    data: dict[str, Any] = single_values(
        {k: v for k, v in fields.items() if k in model.model_fields}
    )
    if changes is not None and "changes" in model.model_fields:
        data["changes"] = changes
    return data


async def _render(request: web.Request, subscriber_id: int, message: str | None) -> web.Response:
    r: Resources = res(request)
    async with r.sessions.begin() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        subs: list[Subscription] = (
            await preferences.subscriptions_of(session, subscriber_id) if subscriber else []
        )
        titles = await titles_of(session, subs)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"message": message, "subscriptions": [_json(s) for s in subs]})
    page = r.templates.get_template("pages/manage.html").render(
        mode="list",
        message=message,
        email=subscriber.email if subscriber else "",
        subscriptions=subs,
        names={s.id: subscription_name(s.kind, s.label, titles) for s in subs},
        action=request.path,
        frequency_words=preferences.FREQUENCY_WORDS,
        choices={s.id: preferences.choices_of(s) for s in subs},
        meanings={s.id: meaning(s.mesh_id, s.requires, s.label) for s in subs},
        home=site_home(request),
        site_name=r.settings.site_name,
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
        "changes": [label for label, on in preferences.choices_of(sub) if on],
        "meaning": meaning(sub.mesh_id, sub.requires, sub.label),
    }
