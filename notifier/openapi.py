"""The OpenAPI 3.1 document at /openapi.json, assembled from each handler module's fragment.

Each handler module may define `OPENAPI_PATHS: dict[str, dict]` (path -> operations) and
`OPENAPI_SCHEMAS: dict[str, dict]` (component schemas, e.g. from pydantic's model_json_schema).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from notifier import __version__


def build_spec(modules: tuple[ModuleType, ...], server_url: str) -> dict[str, Any]:
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
        for path, operations in getattr(module, "OPENAPI_PATHS", {}).items():
            paths.setdefault(path, {}).update(operations)
        schemas.update(getattr(module, "OPENAPI_SCHEMAS", {}))
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


def error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
