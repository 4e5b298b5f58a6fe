"""/metrics parses with the Prometheus text parser and its counters move as requests arrive."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from notifier.app import create_app
from notifier.resources import Resources
from tests.conftest import ADMIN_TOKEN
from tests.factories import make_subscription

# /metrics on the public port needs the admin token (issue 18, finding 5).
METRICS_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_metrics_parse_and_count_requests(client: TestClient[Any, Any]) -> None:
    before = sample(
        await (await client.get("/metrics", headers=METRICS_AUTH)).text(),
        "notifier_http_requests_total",
        route="/healthz",
        status="200",
    )
    for _ in range(3):
        assert (await client.get("/healthz")).status == 200
    text = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
    after = sample(text, "notifier_http_requests_total", route="/healthz", status="200")
    assert after == before + 3
    assert sample(text, "notifier_queue_depth") == 0


async def test_metrics_never_carry_raw_paths(client: TestClient[Any, Any]) -> None:
    await client.get("/v1/confirm/secret-token-value")
    text = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
    assert "secret-token-value" not in text


# --- never public (issue 18, finding 5) -------------------------------------------------------


async def test_metrics_on_the_public_port_need_the_admin_token(
    client: TestClient[Any, Any],
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401
        assert "notifier_" not in await resp.text()


async def test_metrics_listener_takes_the_first_free_port_of_its_range(
    resources: Resources,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        first = busy.getsockname()[1]
        free = _free_port_after(first)
        settings = resources.settings.model_copy(
            update={"metrics_bind": f"127.0.0.1:{first}-{free}"}
        )
        app = create_app(settings, resources, serve_metrics=True)
        async with (
            TestClient(TestServer(app, host="127.0.0.1")),
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{free}/metrics") as resp,
        ):
            assert resp.status == 200
            text = await resp.text()
    assert "notifier_http_requests_total" in text
    assert "notifier_workers_alive" in text


def _free_port_after(port: int) -> int:
    for candidate in range(port + 1, min(port + 200, 65535)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise AssertionError("no free port")


async def test_signup_metrics_do_not_tell_a_known_address_from_a_new_one(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    """`notifier_signups_total{outcome="confirmed"}` vs `"new"` told an outsider which the
    address just submitted was: the counters move alike now."""
    async with resources.sessions.begin() as session:
        await make_subscription(session, resources, email="known@example.org")

    async def moved_by(email: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        before = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
        resp = await client.post("/v1/subscriptions", json={"email": email, "study": "NCT05879978"})
        assert resp.status == 202
        after = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
        return {
            key: value - _samples(before).get(key, 0.0)
            for key, value in _samples(after).items()
            if key[0] == "notifier_signups_total" and value != _samples(before).get(key, 0.0)
        }

    assert await moved_by("known@example.org") == await moved_by("new@example.org")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
