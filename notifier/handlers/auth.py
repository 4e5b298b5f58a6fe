"""Bearer-token check for /v1/admin/* and /v1/bounces, in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from notifier.handlers.middleware import res


def require_admin(request: web.Request) -> None:
    """Raise 401 unless `Authorization: Bearer <NOTIFIER_ADMIN_TOKEN>` matches exactly."""
    expected = res(request).settings.admin_token.encode()
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # compare_digest on equal-purpose byte strings: no early exit on the first wrong byte.
    # surrogateescape: header bytes that are not UTF-8 compare as the bytes they were (no 500).
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    ok = hmac.compare_digest(given_bytes, expected) and scheme.lower() == "bearer"
    if not ok or not expected:
        raise web.HTTPUnauthorized(
            text='{"error": "admin token required"}',
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="notifier-admin"'},
        )
