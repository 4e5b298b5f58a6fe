"""POST /v1/studies (signed, raw CT.gov records in) and GET /v1/studies/{nct_id} (public)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from notifier.core.ctgov import RecordError
from notifier.core.studies import StudiesInvalid, ingest_records, parse_studies
from notifier.core.vocabulary import vocabulary
from notifier.data.study_queries import StudyInfo, study_info
from notifier.handlers.events import signed_body_or_401
from notifier.handlers.middleware import error_response, res
from notifier.handlers.openapi import error_response as openapi_error
from notifier.mail.labels import status_label

CACHE_SECONDS = 300  # the website's box may show a status up to five minutes old
NCT_PATTERN = "[Nn][Cc][Tt][0-9]{8}"  # ASCII digits only, any case


async def post_studies(request: web.Request) -> web.Response:
    r = res(request)
    # The signature header first, then the body (bounded, timed) through the HMAC.
    body = await signed_body_or_401(
        request, r.settings.event_secrets, r.settings.max_study_body_bytes, "studies"
    )
    if isinstance(body, web.Response):
        return body
    try:
        records = parse_studies(json.loads(body), r.settings.max_study_batch)
        ingested = await ingest_records(r, records, "studies")
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8 (RecordError: see below)
        if isinstance(exc, RecordError):
            return error_response(request, 422, "invalid study", {"study": str(exc)})
        return error_response(request, 422, "invalid JSON", {"body": "not a JSON document"})
    except StudiesInvalid as exc:
        return error_response(request, 422, str(exc), exc.fields)
    return web.json_response(
        {
            "results": [outcome.as_json() for outcome in ingested.outcomes],
            **ingested.counts(),
            "events": len(ingested.stored.new_pks),
            "duplicates": ingested.stored.duplicates,
        },
        status=202,
    )


async def get_study(request: web.Request) -> web.Response:
    nct_id = request.match_info["nct_id"].upper()
    async with res(request).sessions() as session:
        info = await study_info(session, nct_id)
    if info is None:
        return error_response(request, 404, "study not known here")
    body = json.dumps(study_json(info), separators=(",", ":"), ensure_ascii=False).encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "Cache-Control": f"public, max-age={CACHE_SECONDS}",
        "ETag": etag,
        "Access-Control-Allow-Origin": "*",  # public facts, no credentials: any site may show them
    }
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


def study_json(info: StudyInfo) -> dict[str, Any]:
    vocab = vocabulary()
    conditions = []
    for text in info.conditions:
        resolved = vocab.resolve(text)
        conditions.append(
            {
                "text": text,
                "resolves_to": [
                    {"mesh_id": ui, "name": vocab.name(ui) or ui, "label": vocab.label(ui)}
                    for ui in resolved.mesh_ids
                ],
            }
        )
    status = info.overall_status
    return {
        "nct_id": info.nct_id,
        "url": info.url,
        "title": info.title,
        "short_title": info.short_title,
        "name": info.name,
        "overall_status": status,
        "status_label": status_label(status) if status else None,
        "why_stopped": info.why_stopped,
        "last_update_posted": info.last_update_posted,
        "source": "record" if info.from_record else "events",
        "conditions": conditions,
        "condition_mesh": info.condition_mesh,
        "sites": info.sites.as_json(),
    }


_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_MESH = {
    "type": "object",
    "required": ["id", "term"],
    "properties": {"id": {"type": "string"}, "term": {"type": "string"}},
}
_NULLABLE_TEXT = {"type": ["string", "null"]}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "StudiesAccepted": {
        "type": "object",
        "required": ["results", "new", "changed", "unchanged", "stale", "events", "duplicates"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["nct_id", "outcome", "version_key", "kinds"],
                    "properties": {
                        "nct_id": {"type": "string"},
                        "outcome": {"enum": ["new", "changed", "unchanged", "stale"]},
                        "version_key": {"type": "string"},
                        "kinds": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            **{
                name: {"type": "integer", "minimum": 0}
                for name in ("new", "changed", "unchanged", "stale", "events", "duplicates")
            },
        },
    },
    "Study": {
        "type": "object",
        "required": ["nct_id", "url", "title", "name", "overall_status", "conditions", "sites"],
        "properties": {
            "nct_id": {"type": "string", "pattern": "^NCT[0-9]{8}$"},
            "url": {"type": "string"},
            "title": {"type": "string"},
            "short_title": _NULLABLE_TEXT,
            "name": {"type": "string", "description": "short title when it has one, else title"},
            "overall_status": _NULLABLE_TEXT,
            "status_label": _NULLABLE_TEXT,
            "why_stopped": _NULLABLE_TEXT,
            "last_update_posted": _NULLABLE_TEXT,
            "source": {"enum": ["record", "events"]},
            "conditions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["text", "resolves_to"],
                    "properties": {
                        "text": {"type": "string"},
                        "resolves_to": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "mesh_id": {"type": "string"},
                                    "name": {"type": "string"},
                                    "label": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
            "condition_mesh": {"type": "array", "items": _MESH},
            "sites": {
                "type": "object",
                "required": ["total", "by_status", "by_country"],
                "properties": {
                    "total": {"type": "integer", "minimum": 0},
                    "by_status": _COUNTS,
                    "by_country": _COUNTS,
                },
            },
        },
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/studies": {
        "post": {
            "summary": "Ingest ClinicalTrials.gov API v2 study records (one, or a batch)",
            "description": (
                "Signed like POST /v1/events. Each record is validated (a bad batch stores "
                "nothing), stored as the study's latest snapshot and diffed against the "
                "previous one; the derived trial-change events are stored in the same "
                "transaction (deterministic event_id: the same change through /v1/events is "
                "one event). new_study only for studies first posted within "
                "NOTIFIER_NEW_STUDY_WINDOW_DAYS."
            ),
            "security": [{"eventSignature": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["protocolSection"],
                                    "description": "one study, as /api/v2/studies/{nctId}",
                                },
                                {
                                    "type": "object",
                                    "required": ["studies"],
                                    "properties": {
                                        "studies": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {"type": "object"},
                                        }
                                    },
                                },
                            ]
                        }
                    }
                },
            },
            "responses": {
                "202": {
                    "description": "stored; one outcome per record, in the order sent",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/StudiesAccepted"}
                        }
                    },
                },
                "401": openapi_error("missing, stale or wrong signature"),
                "413": openapi_error("body larger than NOTIFIER_MAX_STUDY_BODY_BYTES"),
                "422": openapi_error("invalid record(s): fields name studies.<i> and the path"),
                "503": openapi_error("database unavailable; retry"),
            },
        }
    },
    "/v1/studies/{nct_id}": {
        "get": {
            "summary": "What the service knows of a study (for a 'Get notified' box)",
            "parameters": [
                {
                    "name": "nct_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": f"^{NCT_PATTERN}$"},
                }
            ],
            "responses": {
                "200": {
                    "description": "cacheable (Cache-Control public, ETag)",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Study"}}
                    },
                },
                "304": {"description": "not modified (If-None-Match)"},
                "404": openapi_error("unknown study, or not an NCT id"),
            },
        }
    },
}
