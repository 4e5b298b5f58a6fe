"""Behind a trusted proxy (issue 18, findings 6 and 11): every X-Forwarded-For line counts, and
HSTS is sent when the request arrived over HTTPS."""

from __future__ import annotations

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
