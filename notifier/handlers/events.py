"""POST /v1/events (HMAC-signed, from the sync pipeline) and GET /v1/admin/events/{event_id}."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from notifier.core import events
from notifier.core.normalize import is_storable_text
from notifier.core.signing import SignatureError
from notifier.handlers.auth import require_admin
from notifier.handlers.middleware import error_response, res
from notifier.handlers.openapi import error_response as openapi_error
from notifier.handlers.signed import read_signed_body
from notifier.metrics import EVENTS


async def signed_body_or_401(
    request: web.Request, secrets: list[str], limit: int, source: str
) -> bytes | web.Response:
    """The proven body of a signed route, or its 401 (counted under `source`)."""
    try:
        return await read_signed_body(request, secrets, limit)
    except SignatureError as exc:
        EVENTS.labels("unauthorized", source).inc()
        return error_response(request, 401, f"bad signature: {exc}")


async def post_events(request: web.Request) -> web.Response:
    r = res(request)
    body = await signed_body_or_401(
        request, r.settings.event_secrets, r.settings.max_event_body_bytes, "http"
    )
    if isinstance(body, web.Response):
        return body
    try:
        parsed = events.parse_events(json.loads(body))
    except (ValueError, RecursionError):  # JSONDecodeError and bad UTF-8 are ValueErrors
        EVENTS.labels("rejected", "http").inc()
        return error_response(request, 422, "invalid JSON", {"body": "not a JSON document"})
    except events.EventsInvalid as exc:
        EVENTS.labels("rejected", "http").inc()
        return error_response(request, 422, str(exc), exc.fields)
    stored = await events.ingest(r, parsed, "http")
    return web.json_response(
        {"accepted": len(stored.new_pks), "duplicates": stored.duplicates}, status=202
    )


async def event_progress(request: web.Request) -> web.Response:
    require_admin(request)
    event_id = request.match_info["event_id"]
    if not is_storable_text(event_id):  # no stored event has one: do not ask the database
        return error_response(request, 404, "no such event")
    async with res(request).sessions() as session:
        progress = await events.progress(session, event_id)
    if progress is None:
        return error_response(request, 404, "no such event")
    return web.json_response(progress)


def _paths() -> dict[str, Any]:
    batch = {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": events.MAX_BATCH,
                "items": {"$ref": "#/components/schemas/TrialChangeEvent"},
            }
        },
    }
    return {
        "/v1/events": {
            "post": {
                "summary": "Ingest trial-change events (one, or a batch of up to 500)",
                "description": (
                    "Signed with `Notifier-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "
                    "'<t>.' + raw body)>`; several v1= and several secrets are accepted; t must "
                    "be within 300 s of the server clock. Events are stored before 202; a repeated "
                    "event_id is counted as a duplicate and not processed again. A batch is "
                    "all or nothing."
                ),
                "security": [{"eventSignature": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/TrialChangeEvent"},
                                    batch,
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "stored",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/EventsAccepted"}
                            }
                        },
                    },
                    "401": openapi_error("missing, stale or wrong signature"),
                    "408": openapi_error("body not sent within NOTIFIER_BODY_TIMEOUT"),
                    "413": openapi_error("body larger than NOTIFIER_MAX_EVENT_BODY_BYTES"),
                    "422": openapi_error("invalid event(s); field names are events.<i>.<field>"),
                    "503": openapi_error(
                        "database unavailable, or too many large bodies at once; retry"
                    ),
                },
            }
        },
        "/v1/admin/events/{event_id}": {
            "get": {
                "summary": "Fan-out progress of one event",
                "security": [{"admin": []}],
                "parameters": [
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "progress",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/EventProgress"}
                            }
                        },
                    },
                    "401": openapi_error("admin token required"),
                    "404": openapi_error("no such event"),
                },
            }
        },
    }


OPENAPI_PATHS = _paths()
OPENAPI_SCHEMAS: dict[str, Any] = {
    **events.openapi_schemas(),
    "EventsAccepted": {
        "type": "object",
        "required": ["accepted", "duplicates"],
        "properties": {"accepted": {"type": "integer"}, "duplicates": {"type": "integer"}},
    },
    "EventProgress": {
        "type": "object",
        "required": list(events.PROGRESS_FIELDS),
        "properties": {
            name: {"type": "string"}
            if name in ("event_id", "status")
            else {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "when retention removed the delivery rows (counts stay)"
                if name == "compacted_at"
                else "when retention cut the event's payload",
            }
            if name in events.PROGRESS_TIMES
            else {"type": "integer"}
            for name in events.PROGRESS_FIELDS
        },
    },
}
