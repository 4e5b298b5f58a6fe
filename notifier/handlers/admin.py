"""Operator endpoints: the suppression list, bounce intake and GDPR export/erase of one address."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from aiohttp import web
from email_validator import EmailNotValidError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from notifier.core import suppression
from notifier.core.normalize import is_storable_text
from notifier.core.signup_input import normalize_email
from notifier.handlers.auth import require_admin
from notifier.handlers.bodies import read_json
from notifier.handlers.middleware import error_response, res
from notifier.handlers.openapi import ADDRESS_PATTERN
from notifier.handlers.openapi import error_response as openapi_error

MAX_BOUNCES = 500
MAX_ID = 2**63 - 1  # a BIGINT: a larger cursor is a 422, not a database error


_ADDRESS = re.compile(ADDRESS_PATTERN)


def _address(value: str) -> str:
    """Lenient on purpose: erasure and bounces must work for any address we may hold."""
    # Exactly the pattern the spec publishes, and no unpaired surrogate (which it cannot say).
    if _ADDRESS.fullmatch(value) is None or not is_storable_text(value):
        raise ValueError("not an email address")
    try:
        return normalize_email(value)  # the form signup stored it in
    except EmailNotValidError:
        return value.strip().lower()  # lenient: an address we may hold from before


def _detail(value: str | None) -> str | None:
    if value is not None and not is_storable_text(value):
        raise ValueError("must not contain U+0000 or unpaired surrogates")
    return value


Detail = Annotated[str | None, Field(default=None, max_length=500), AfterValidator(_detail)]

Email = Annotated[
    str,
    Field(min_length=3, max_length=320, json_schema_extra={"pattern": ADDRESS_PATTERN}),
    AfterValidator(_address),
]


class EmailQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    email: Email


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    email: Email | None = None
    after: int = Field(default=0, ge=0, le=MAX_ID)
    limit: int = Field(default=100, ge=1, le=1000)


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Email
    reason: str = Field(default="manual", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    detail: Detail = None


class BounceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Email
    kind: Literal["hard", "soft", "complaint"]
    detail: Detail = None


class BounceBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bounces: list[BounceIn] = Field(min_length=1, max_length=MAX_BOUNCES)

    @model_validator(mode="before")
    @classmethod
    def _single(cls, data: Any) -> Any:
        return data if isinstance(data, dict) and "bounces" in data else {"bounces": [data]}


async def list_suppressions(request: web.Request) -> web.Response:
    require_admin(request)
    r = res(request)
    q = ListQuery.model_validate(dict(request.query))
    email_hash = r.email_hash(q.email) if q.email else None
    async with r.sessions.begin() as session:
        rows = await suppression.list_page(
            session, email_hash=email_hash, after=q.after, limit=q.limit
        )
    return web.json_response(
        {
            "suppressions": [suppression.suppression_json(row) for row in rows],
            "next_after": rows[-1].id if len(rows) == q.limit else None,
        }
    )


async def add_suppression(request: web.Request) -> web.Response:
    require_admin(request)
    r = res(request)
    data = SuppressionIn.model_validate(await _json(request))
    async with r.sessions.begin() as session:
        row, created = await suppression.add(
            session, r.email_hash(data.email), data.reason, data.detail
        )
        body = suppression.suppression_json(row)
    return web.json_response(body, status=201 if created else 200)


async def remove_suppression(request: web.Request) -> web.Response:
    require_admin(request)
    r = res(request)
    q = EmailQuery.model_validate(dict(request.query))
    async with r.sessions.begin() as session:
        removed = await suppression.remove(session, r.email_hash(q.email))
    if not removed:
        return error_response(request, 404, "this address is not suppressed")
    return web.json_response({"removed": True})


async def bounces(request: web.Request) -> web.Response:
    require_admin(request)
    r = res(request)
    batch = BounceBatch.model_validate(await _json(request))
    newly = 0
    async with r.sessions.begin() as session:
        for item in batch.bounces:
            hashed = r.email_hash(item.email)
            newly += await suppression.record_bounce(session, r, hashed, item.kind, item.detail)
    return web.json_response({"accepted": len(batch.bounces), "suppressed": newly})


async def export_subscriber(request: web.Request) -> web.Response:
    require_admin(request)
    r = res(request)
    q = EmailQuery.model_validate(dict(request.query))
    async with r.sessions.begin() as session:
        return web.json_response(await suppression.export(session, r, q.email))


async def erase_subscriber(request: web.Request) -> web.Response:
    require_admin(request)
    r = res(request)
    q = EmailQuery.model_validate(dict(request.query))
    async with r.sessions.begin() as session:
        counts = await suppression.erase(session, r, q.email)
    return web.json_response({"erased": counts, "suppressed": True})


async def _json(request: web.Request) -> Any:
    """The JSON body, or None (which validation rejects with a 422) when it is not JSON."""
    return await read_json(request)


# ---- OpenAPI -------------------------------------------------------------------------------

_ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
_EMAIL_SCHEMA = {"type": "string", "minLength": 3, "maxLength": 320, "pattern": ADDRESS_PATTERN}
_EMAIL_PARAM = {"name": "email", "in": "query", "required": True, "schema": _EMAIL_SCHEMA}
_TOO_LARGE = openapi_error("body larger than NOTIFIER_MAX_BODY_BYTES")
_NOT_UTF8 = openapi_error("declared charset is not UTF-8")
_UNAUTHORIZED = openapi_error("missing or wrong admin token")
_INVALID = openapi_error("invalid input")


def _json_content(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


OPENAPI_SCHEMAS: dict[str, Any] = {
    "SuppressionIn": SuppressionIn.model_json_schema(),
    "BounceIn": BounceIn.model_json_schema(),
    "Suppression": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "email_hash": {"type": "string", "description": "keyed HMAC-SHA256 of the address"},
            "reason": {"type": "string"},
            "detail": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "SuppressionPage": {
        "type": "object",
        "properties": {
            "suppressions": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Suppression"},
            },
            "next_after": {"type": ["integer", "null"], "description": "pass as ?after="},
        },
    },
    "SubscriberExport": {
        "type": "object",
        "description": "Everything held about one address: subscriber, subscriptions with consent "
        "evidence, deliveries, suppression, bounces",
        "properties": {
            "subscriber": {"type": ["object", "null"]},
            "subscriptions": {"type": "array", "items": {"type": "object"}},
            "deliveries": {"type": "array", "items": {"type": "object"}},
            "suppression": {
                "oneOf": [{"$ref": "#/components/schemas/Suppression"}, {"type": "null"}]
            },
            "bounces": {"type": "array", "items": {"type": "object"}},
        },
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/admin/suppressions": {
        "get": {
            "summary": "The suppression list, oldest first, paginated by id",
            "security": _ADMIN,
            "parameters": [
                {**_EMAIL_PARAM, "required": False},
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
            ],
            "responses": {
                "200": {"description": "a page", "content": _json_content("SuppressionPage")},
                "401": _UNAUTHORIZED,
                "422": _INVALID,
            },
        },
        "post": {
            "summary": "Suppress an address and end its subscriptions",
            "security": _ADMIN,
            "requestBody": {"required": True, "content": _json_content("SuppressionIn")},
            "responses": {
                "201": {"description": "suppressed", "content": _json_content("Suppression")},
                "200": {
                    "description": "already suppressed",
                    "content": _json_content("Suppression"),
                },
                "401": _UNAUTHORIZED,
                "413": _TOO_LARGE,
                "415": _NOT_UTF8,
                "422": _INVALID,
            },
        },
        "delete": {
            "summary": "Lift a suppression (ended subscriptions stay ended)",
            "security": _ADMIN,
            "parameters": [_EMAIL_PARAM],
            "responses": {
                "200": {"description": "removed"},
                "401": _UNAUTHORIZED,
                "404": openapi_error("not suppressed"),
                "422": _INVALID,
            },
        },
    },
    "/v1/bounces": {
        "post": {
            "summary": "Bounce and complaint intake: hard and complaint suppress, soft bounces "
            "suppress after NOTIFIER_SOFT_BOUNCE_LIMIT within NOTIFIER_SOFT_BOUNCE_WINDOW_DAYS",
            "security": _ADMIN,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/BounceIn"},
                                {
                                    "type": "object",
                                    "required": ["bounces"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "bounces": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": MAX_BOUNCES,
                                            "items": {"$ref": "#/components/schemas/BounceIn"},
                                        }
                                    },
                                },
                            ]
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "recorded",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "accepted": {"type": "integer"},
                                    "suppressed": {"type": "integer"},
                                },
                            }
                        }
                    },
                },
                "401": _UNAUTHORIZED,
                "413": _TOO_LARGE,
                "415": _NOT_UTF8,
                "422": _INVALID,
            },
        }
    },
    "/v1/admin/subscribers": {
        "get": {
            "summary": "GDPR export of one address",
            "security": _ADMIN,
            "parameters": [_EMAIL_PARAM],
            "responses": {
                "200": {
                    "description": "all data held",
                    "content": _json_content("SubscriberExport"),
                },
                "401": _UNAUTHORIZED,
                "422": _INVALID,
            },
        },
        "delete": {
            "summary": "GDPR erase: delete the address's data, keep its keyed hash suppressed",
            "security": _ADMIN,
            "parameters": [_EMAIL_PARAM],
            "responses": {
                "200": {"description": "erased, with counts of deleted rows"},
                "401": _UNAUTHORIZED,
                "422": _INVALID,
            },
        },
    },
}
