"""Request bodies at the edge: read within a size cap and a time limit, then decoded strictly
(a JSON object, a urlencoded form or multipart form fields, all UTF-8); nothing a client sends
can make reading fail other than with a 4xx."""

from __future__ import annotations

import asyncio
import json
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from typing import Any
from urllib.parse import parse_qs

from aiohttp import ClientPayloadError, web

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MULTIPART = "multipart/form-data"
MAX_FORM_FIELDS = 100
CHUNK = 64 * 1024
UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
BODY_TIMEOUT = web.AppKey("body_timeout", float)


class BodyError(Exception):
    """A body that cannot be read at all (wrong type, bad encoding): 400 or 415 with a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyTimeout(Exception):
    """The client did not send its whole body in time: 408, and the connection is closed."""


def body_timeout(request: web.Request) -> float:
    return request.app.get(BODY_TIMEOUT, 30.0)


async def read_raw(request: web.Request, limit: int | None = None) -> bytes:
    """The raw body, up to `limit` bytes (default: the app's client_max_size, then 413), within
    the body timeout: a client that sends one byte a minute is cut off, not waited for."""
    cap = request.client_max_size if limit is None else limit
    if request.content_length is not None and request.content_length > cap:
        raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=request.content_length)
    buf = bytearray()
    try:
        async with asyncio.timeout(body_timeout(request)):
            async for chunk in request.content.iter_chunked(CHUNK):
                buf += chunk
                if len(buf) > cap:
                    raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=len(buf))
    except TimeoutError:
        raise BodyTimeout from None
    return bytes(buf)


async def peek_body(request: web.Request, size: int) -> bytes:
    """Up to `size` bytes of the body, or what arrived of them: never raises for anything the
    client did (a slow, truncated or oversized body), for routes that must act whatever the
    body is (RFC 8058 one-click unsubscribe)."""
    buf = bytearray()
    try:
        async with asyncio.timeout(body_timeout(request)):
            while len(buf) < size:
                chunk = await request.content.read(size - len(buf))
                if not chunk:
                    break
                buf += chunk
    except (TimeoutError, OSError, ValueError, RuntimeError, ClientPayloadError):
        pass  # what arrived is all there is: the caller acts anyway
    return bytes(buf)


def check_charset(request: web.Request) -> None:
    """Bodies are UTF-8: a declared charset that is anything else (or unknown) is a 415."""
    charset = request.charset
    if charset is not None and charset.strip().lower() not in UTF8_NAMES:
        raise BodyError(415, "send the body in UTF-8 (charset=utf-8)")


async def read_fields(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """A JSON object, a urlencoded form or multipart form fields -> dict (form values: lists)."""
    ctype = request.content_type
    raw = await read_raw(request)
    if ctype == MULTIPART:
        return multipart_fields(request.headers.get("Content-Type", ""), raw)
    check_charset(request)
    return decode_body(ctype, raw, allow_empty=allow_empty)


async def read_json(request: web.Request) -> Any:
    """The body as JSON whatever its declared type (admin clients), or None when it is not:
    validation then answers 422."""
    raw = await read_raw(request)
    check_charset(request)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def decode_body(content_type: str, raw: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """JSON object or urlencoded form -> dict; form fields map to lists (a name may repeat)."""
    if allow_empty and not raw.strip():
        return {}
    if content_type == JSON:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
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


def multipart_fields(content_type_header: str, raw: bytes) -> dict[str, list[str]]:
    """The text fields of a multipart/form-data body (files are ignored), read with the
    standard library's lenient MIME parser: a part in an unknown transfer encoding or charset
    is a 400, never an exception."""
    if "boundary=" not in content_type_header.lower():
        raise BodyError(400, "multipart body without a boundary")
    head = f"Content-Type: {content_type_header}\r\nMIME-Version: 1.0\r\n\r\n".encode(
        "utf-8", "surrogateescape"
    )
    message = message_from_bytes(head + raw, policy=compat32)
    parts = message.get_payload() if message.is_multipart() else None
    if not isinstance(parts, list):
        raise BodyError(400, "multipart body could not be read")
    fields: dict[str, list[str]] = {}
    for part in parts[:MAX_FORM_FIELDS]:
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.get_param("filename", header="content-disposition"):
            continue
        fields.setdefault(name, []).append(_part_text(part))
    return fields


def _part_text(part: Message) -> str:
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte not in ("", "7bit", "8bit", "binary", "quoted-printable", "base64"):
        raise BodyError(400, "unknown Content-Transfer-Encoding in a form field")
    charset = (part.get_content_charset() or "utf-8").lower()
    if charset not in UTF8_NAMES:
        raise BodyError(400, "form fields must be UTF-8")
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(400, "form field is not valid UTF-8") from None


def single_values(form: dict[str, list[str]]) -> dict[str, str]:
    """A form where each name may appear once (repeats are a bug in the page)."""
    repeated = sorted(name for name, values in form.items() if len(values) > 1)
    if repeated:
        raise BodyError(400, f"form field given more than once: {', '.join(repeated)}")
    return {name: values[0] for name, values in form.items()}
