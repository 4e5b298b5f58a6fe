"""GET /v1/conditions: condition suggestions for the signup form, from the MeSH vocabulary."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from aiohttp import web

from notifier.core.vocabulary import vocabulary
from notifier.handlers.middleware import error_response
from notifier.handlers.openapi import JSON
from notifier.handlers.openapi import error_response as error_doc

CORS_PATHS = ("/v1/conditions",)
Q_MIN, Q_MAX = 2, 200  # what the form's condition field takes; the first 100 are searched
LIMIT_MAX, LIMIT_DEFAULT = 20, 8
# The vocabulary changes with a release only: browsers and proxies may keep answers a day.
CACHE = "public, max-age=86400"


async def suggest_conditions(request: web.Request) -> web.Response:
    q = request.query.get("q", "")
    raw_limit = request.query.get("limit", str(LIMIT_DEFAULT))
    fields: dict[str, str] = {}
    if not Q_MIN <= len(q) <= Q_MAX:
        fields["q"] = f"must be {Q_MIN} to {Q_MAX} characters"
    limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() else 0
    if not 1 <= limit <= LIMIT_MAX:
        fields["limit"] = f"must be a whole number from 1 to {LIMIT_MAX}"
    if fields:
        return error_response(request, 422, "invalid query", fields)
    return web.Response(
        body=_answer(q, limit),
        content_type="application/json",
        headers={"Cache-Control": CACHE},
    )


@lru_cache(maxsize=4096)
def _answer(q: str, limit: int) -> bytes:
    """The JSON body for a query, kept: the same few prefixes come back from every form."""
    found = [
        {"mesh_id": s.mesh_id, "name": s.name, "label": s.label, "matched": s.matched}
        for s in vocabulary().suggest(q, limit)
    ]
    return json.dumps({"conditions": found}).encode()


_SUGGESTION = {
    "type": "object",
    "required": ["mesh_id", "name", "label", "matched"],
    "properties": {
        "mesh_id": {"type": "string", "description": "MeSH descriptor UI, e.g. D008175"},
        "name": {"type": "string", "description": "the MeSH heading: Lung Neoplasms"},
        "label": {"type": "string", "description": "words a patient uses: Lung cancer"},
        "matched": {"type": "string", "description": "the term that matched what was typed"},
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/conditions": {
        "get": {
            "summary": "Condition suggestions for the signup form (MeSH 2024)",
            "description": (
                "Ranked: the typed words as a term, an abbreviation or a lay name first, then "
                "terms starting with them, then terms holding them; one per descriptor. "
                "Pass the chosen `mesh_id` with the signup. CORS for the allowed origins; "
                "cacheable."
            ),
            "parameters": [
                {
                    "name": "q",
                    "in": "query",
                    "required": True,
                    "description": "what the person typed so far (the first 100 are searched)",
                    "schema": {"type": "string", "minLength": Q_MIN, "maxLength": Q_MAX},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": LIMIT_MAX,
                        "default": LIMIT_DEFAULT,
                    },
                },
            ],
            "responses": {
                "200": {
                    "description": "suggestions, best first (an empty list when none)",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["conditions"],
                                "properties": {
                                    "conditions": {"type": "array", "items": _SUGGESTION}
                                },
                            }
                        }
                    },
                },
                "422": error_doc("q or limit out of range"),
            },
        }
    }
}
