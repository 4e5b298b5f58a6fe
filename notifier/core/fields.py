"""Field errors as a person reads them: pydantic's errors as {field: message}."""

from __future__ import annotations

from pydantic import ValidationError


def validation_fields(exc: ValidationError) -> dict[str, str]:
    """The first message per field ("email", "events.0.nct_id"; "body" for the whole)."""
    fields: dict[str, str] = {}
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "body"
        fields.setdefault(name, err["msg"].removeprefix("Value error, "))
    return fields
