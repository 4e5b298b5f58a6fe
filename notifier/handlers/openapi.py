"""The OpenAPI 3.1 document at /openapi.json, assembled from each handler module's fragment.

Each handler module may define `OPENAPI_PATHS: dict[str, dict]` (path -> operations) and
`OPENAPI_SCHEMAS: dict[str, dict]` (component schemas, e.g. from pydantic's model_json_schema).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from notifier import __version__

JSON = "application/json"
# An address as the admin endpoints take it: one "@", no space, control, format or separator
# character (each listed: a regex's \s means different things in ECMAScript and Python).
# The server checks exactly this pattern (handlers/admin.py). Signup validates more strictly;
# the operator must reach any address that may be stored.
_NOT_IN_ADDRESS = "".join(
    f"{chr(low)}-{chr(high)}" if high > low else chr(low)
    for low, high in (
        (0x00, 0x20),
        (0x7F, 0xA0),
        (0xAD, 0xAD),
        (0x600, 0x605),
        (0x61C, 0x61C),
        (0x6DD, 0x6DD),
        (0x70F, 0x70F),
        (0x8E2, 0x8E2),
        (0x1680, 0x1680),
        (0x180E, 0x180E),
        (0x2000, 0x200F),
        (0x2028, 0x202F),
        (0x205F, 0x206F),
        (0x3000, 0x3000),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
    )
)
# Unpaired surrogates (a JSON "\\ud800") cannot be said in a pattern; the server refuses
# them too (notifier.core.normalize.is_storable_text).
ADDRESS_PATTERN = f"^[^@{_NOT_IN_ADDRESS}]+@[^@{_NOT_IN_ADDRESS}]+$"
# An address signup accepts (email-validator's syntax, ASCII form): dot-atoms, a dotted domain.
_ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,20}[A-Za-z0-9])?"
SIGNUP_EMAIL_PATTERN = (
    rf"^{_ATEXT}{{1,30}}(?:\.{_ATEXT}{{1,30}})?@(?:{_LABEL}\.){{1,3}}[A-Za-z]{{2,12}}$"
)


def build_spec(
    modules: tuple[ModuleType, ...], server_url: str, *, dev: bool = False
) -> dict[str, Any]:
    """The spec of what this process serves: modules' DEV_ONLY_PATHS only when `dev`."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    }
    for module in modules:
        hidden: frozenset[str] = (
            frozenset() if dev else getattr(module, "DEV_ONLY_PATHS", frozenset())
        )
        for path, operations in getattr(module, "OPENAPI_PATHS", {}).items():
            if path not in hidden:
                paths.setdefault(path, {}).update(operations)
        schemas.update(getattr(module, "OPENAPI_SCHEMAS", {}))
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {}}}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "notifier",
            "version": __version__,
            "description": "Email alerts for clinical-trial changes.",
        },
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer"},
                "eventSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Notifier-Signature",
                    "description": "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.' + body)>",
                },
            },
        },
    }


def error_response(description: str, *, html: bool = False) -> dict[str, Any]:
    """An error answer: JSON `{"error": …}`, or (html=True, for links people open) also a page."""
    content: dict[str, Any] = {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}
    if html:
        content["text/html"] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}
