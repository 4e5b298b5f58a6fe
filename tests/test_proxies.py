"""Behind a trusted proxy (issue 18, findings 6 and 11): every X-Forwarded-For line counts, and
HSTS is sent when the request arrived over HTTPS."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from sqlalchemy import select

from notifier.data.models import Subscription
from notifier.resources import Resources


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # The test client stands for the proxy.
    return {"trusted_proxies": ["127.0.0.1/32"], "ip_requests_per_minute": 2}


def _headers(*lines: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(lines)


async def test_a_clients_own_forwarded_for_line_is_not_believed(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    statuses = []
    for i in range(3):
        headers = _headers(
            ("X-Forwarded-For", f"203.0.113.{i}"),  # the client's own line, forged
            ("X-Forwarded-For", "198.51.100.9"),  # the line the proxy added
        )
        resp = await client.post(
            "/v1/subscriptions",
            json={"email": f"p{i}@example.org", "study": "NCT05879978"},
            headers=headers,
        )
        statuses.append(resp.status)
    assert statuses == [202, 202, 429]  # one client, one limit
    async with resources.sessions() as session:
        ips = set((await session.scalars(select(Subscription.request_ip))).all())
    assert ips == {"198.51.100.9"}


async def test_hsts_only_when_the_request_arrived_over_https(
    client: TestClient[Any, Any],
) -> None:
    plain = await client.get("/healthz")
    assert "Strict-Transport-Security" not in plain.headers
    for lines in (
        [("X-Forwarded-Proto", "https")],
        [("X-Forwarded-Proto", "http"), ("X-Forwarded-Proto", "https")],
    ):
        resp = await client.get("/v1/unsubscribe/x", headers=_headers(*lines))
        assert resp.headers["Strict-Transport-Security"].startswith("max-age="), lines
    spoofed = await client.get("/healthz", headers={"X-Forwarded-Proto": "https, http"})
    assert "Strict-Transport-Security" not in spoofed.headers


async def test_hsts_is_not_believed_from_an_untrusted_peer(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    object.__setattr__(resources.settings, "trusted_proxies", [])  # frozen settings, one test
    resp = await client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in resp.headers


# --- aiohttp's own 400s (finding 11) ------------------------------------------------------------


async def _raw(client: TestClient[Any, Any], data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return answer


def _last_response(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    last = answer[answer.rfind(b"HTTP/1.") :]
    head, _, body = last.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"Z" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # URL over 8190 bytes
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        b"ZZZZ\x16\x03\x01 junk ZZZZ\r\n\r\n",  # junk after a request
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-" + b"Z" * 9000 + b": 1\r\n\r\n",
    ],
    ids=["long-url", "junk-after-request", "long-header"],
)
async def test_unparseable_requests_get_our_error_and_one_log_line(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await _raw(client, request_bytes)
    status, headers, body = _last_response(answer)
    assert 400 <= status < 500, answer[:200]
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert len(headers["X-Request-Id"]) == 32
    assert b"ZZZZ" not in answer  # nothing of the request is echoed
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    lines = [r for r in caplog.records if "unreadable request" in r.getMessage()]
    assert len(lines) == 1
    assert "ZZZZ" not in caplog.text
