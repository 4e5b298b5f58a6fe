"""Request bodies at the edge: a JSON object or a urlencoded form, read strictly."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MAX_FORM_FIELDS = 100


class BodyError(Exception):
    """A body that cannot be read at all (wrong type, bad encoding): 400 or 415 with a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_body(content_type: str, raw: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """JSON object or urlencoded form -> dict; form fields map to lists (a name may repeat)."""
    if allow_empty and not raw.strip():
        return {}
    if content_type == JSON:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BodyError(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BodyError(400, "body must be a JSON object")
        return data
    if content_type == FORM:
        try:
            form = parse_qs(
                raw.decode("utf-8"),
                keep_blank_values=True,
                errors="strict",
                max_num_fields=MAX_FORM_FIELDS,
            )
        except UnicodeDecodeError:
            raise BodyError(400, "form body is not valid UTF-8") from None
        except ValueError:
            raise BodyError(400, f"form has more than {MAX_FORM_FIELDS} fields") from None
        return dict(form)
    raise BodyError(415, f"send {JSON} or {FORM}")


def single_values(form: dict[str, list[str]]) -> dict[str, str]:
    """A form where each name may appear once (repeats are a bug in the page)."""
    repeated = sorted(name for name, values in form.items() if len(values) > 1)
    if repeated:
        raise BodyError(400, f"form field given more than once: {', '.join(repeated)}")
    return {name: values[0] for name, values in form.items()}
