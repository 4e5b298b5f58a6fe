"""HTTP hardening: body limits, security headers on every answer, CORS for configured origins only,
admin endpoints that refuse anything but the exact token, and no secret in the logs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from notifier.data.models import Subscription, Suppression
from notifier.pipeline import encode
from notifier.resources import Resources
from notifier.settings import Settings
from tests.conftest import ADMIN_TOKEN, EVENT_SECRETS, SECRET_KEYS, SITE_ORIGIN
from tests.events_factory import new_study, signed_headers, subscribe

JSON = "application/json"


def routes(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, path) of the real app, with a placeholder in path parameters."""
    found = []
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else None
        if info is None or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        path = info.replace("{token}", "not-a-token").replace("{event_id}", "no-such-event")
        found.append((route.method, path))
    return sorted(set(found))


def assert_secure(resp: aiohttp.ClientResponse) -> None:
    where = f"{resp.method} {resp.url.path} -> {resp.status}"
    assert resp.headers.get("X-Content-Type-Options") == "nosniff", where
    assert "frame-ancestors 'none'" in resp.headers.get("Content-Security-Policy", ""), where


# --- request size -----------------------------------------------------------------------------


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_body_bytes": 4096, "max_event_body_bytes": 32 * 1024}


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/subscriptions", JSON),
        ("/v1/subscriptions", "application/x-www-form-urlencoded"),
        ("/v1/manage", JSON),
        ("/v1/confirm/not-a-token", "application/x-www-form-urlencoded"),
        ("/v1/admin/suppressions", JSON),
        ("/v1/bounces", JSON),
        ("/v1/events", JSON),
    ],
)
async def test_oversized_bodies_get_413_with_an_error_body_and_write_nothing(
    client: TestClient[Any, Any], resources: Resources, path: str, content_type: str
) -> None:
    limit = (
        resources.settings.max_event_body_bytes
        if path == "/v1/events"
        else resources.settings.max_body_bytes
    )
    body = b'{"email": "' + b"a" * (limit + 10) + b'@example.org"}'
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    if path == "/v1/events":
        headers.update(signed_headers(body))
    resp = await client.post(path, data=body, headers=headers)
    assert resp.status == 413, await resp.text()
    assert "too large" in (await resp.json())["error"]
    assert_secure(resp)
    async with resources.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Subscription)) == 0
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0


async def test_oversized_chunked_body_without_length_gets_413(
    client: TestClient[Any, Any],
) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1024

    resp = await client.post("/v1/subscriptions", data=chunks(), headers={"Content-Type": JSON})
    assert resp.status == 413
    assert (await resp.json())["error"]


async def test_an_event_batch_just_under_the_limit_is_read(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    """The events route has its own, larger limit than the app-wide one."""
    body = encode([new_study("NCT05879978", event_id=f"batch-{i}") for i in range(3)])
    assert resources.settings.max_body_bytes < len(body) < resources.settings.max_event_body_bytes
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
    assert resp.status == 202, await resp.text()


# --- security headers on every response -------------------------------------------------------


async def test_every_route_and_method_answers_with_security_headers(
    client: TestClient[Any, Any],
) -> None:
    seen = 0
    for method, path in routes(client.app):
        for accept in (JSON, "text/html"):
            resp = await client.request(method, path, headers={"Accept": accept})
            await resp.read()
            assert resp.status < 500, f"{method} {path}: {resp.status}"
            assert_secure(resp)
            seen += 1
    # Unrouted paths, wrong methods and CORS preflights get them too.
    extra = [
        await client.get("/no/such/path"),
        await client.request("PATCH", "/v1/subscriptions"),
        await client.request("TRACE", "/healthz"),
        await client.options(
            "/v1/subscriptions",
            headers={"Origin": SITE_ORIGIN, "Access-Control-Request-Method": "POST"},
        ),
        await client.options(
            "/v1/subscriptions",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        ),
    ]
    for resp in extra:
        assert_secure(resp)
    assert seen >= 40


async def test_405_names_the_allowed_methods(client: TestClient[Any, Any]) -> None:
    for path, allowed in [
        ("/v1/bounces", {"POST"}),
        ("/v1/subscriptions", {"POST", "OPTIONS"}),  # OPTIONS: the CORS preflight
        ("/v1/admin/suppressions", {"GET", "HEAD", "POST", "DELETE"}),
    ]:
        resp = await client.request("PUT", path)
        assert resp.status == 405
        assert set(resp.headers.get("Allow", "").split(",")) == allowed
        assert (await resp.json())["error"]


@pytest.mark.parametrize("path", ["/v1/confirm/{t}", "/v1/unsubscribe/{t}", "/v1/manage/{t}"])
async def test_token_pages_are_never_cached_nor_leak_their_url(
    client: TestClient[Any, Any], resources: Resources, path: str
) -> None:
    sub = await subscribe(resources, "ada@example.org", study="NCT05879978")
    tokens = {
        "/v1/confirm/{t}": resources.tokens.confirm(sub.subscriber_id, "nonce"),
        "/v1/unsubscribe/{t}": resources.tokens.unsubscribe(sub.id),
        "/v1/manage/{t}": resources.tokens.manage(sub.subscriber_id),
    }
    for token in (tokens[path], "damaged"):
        for method in ("GET", "POST"):
            resp = await client.request(method, path.format(t=token))
            await resp.read()
            assert resp.status < 500
            assert resp.headers["Cache-Control"] == "no-store", (method, resp.status)
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert_secure(resp)


async def test_admin_answers_are_never_cached(client: TestClient[Any, Any]) -> None:
    resp = await client.get(
        "/v1/admin/suppressions", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"


# --- CORS ---------------------------------------------------------------------------------------


async def preflight(client: TestClient[Any, Any], path: str, origin: str) -> aiohttp.ClientResponse:
    return await client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type",
        },
    )


@pytest.mark.parametrize("path", ["/v1/subscriptions", "/v1/manage"])
async def test_cors_only_for_the_configured_origin(client: TestClient[Any, Any], path: str) -> None:
    ok = await preflight(client, path, SITE_ORIGIN)
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == SITE_ORIGIN
    assert "Access-Control-Allow-Credentials" not in ok.headers
    for origin in (
        "https://evil.example",
        "null",
        SITE_ORIGIN + ".evil.example",
        "http://trials.example.org",
    ):
        refused = await preflight(client, path, origin)
        assert refused.status == 403, origin
        assert "Access-Control-Allow-Origin" not in refused.headers
    # The actual request from elsewhere is answered, but the browser is not allowed to read it.
    body = {"email": "x@example.org", "study": "NCT05879978"}
    resp = await client.post(path, json=body, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.post(path, json=body, headers={"Origin": SITE_ORIGIN})
    assert resp.headers["Access-Control-Allow-Origin"] == SITE_ORIGIN


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/suppressions",
        "/v1/admin/subscribers",
        "/v1/bounces",
        "/v1/events",
        "/v1/confirm/x",
        "/v1/unsubscribe/x",
        "/v1/manage/x",
    ],
)
async def test_no_cors_on_operator_pipeline_or_token_endpoints(
    client: TestClient[Any, Any], path: str
) -> None:
    resp = await preflight(client, path, SITE_ORIGIN)
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert resp.status in (403, 405)


# --- admin authentication ---------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/v1/admin/suppressions", None),
    ("POST", "/v1/admin/suppressions", {"email": "victim@example.org"}),
    ("DELETE", "/v1/admin/suppressions?email=victim@example.org", None),
    ("GET", "/v1/admin/subscribers?email=ada@example.org", None),
    ("DELETE", "/v1/admin/subscribers?email=ada@example.org", None),
    ("POST", "/v1/bounces", {"email": "ada@example.org", "kind": "hard"}),
    ("GET", "/v1/admin/events/some-event", None),
]
WRONG_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {ADMIN_TOKEN[:-1]}",  # one byte short
    f"Bearer {ADMIN_TOKEN}x",  # one byte long
    f"Bearer {ADMIN_TOKEN[:-1]}{chr(ord(ADMIN_TOKEN[-1]) + 1)}",  # last byte wrong
    f"Bearer {ADMIN_TOKEN.upper()}",
    f"Basic {ADMIN_TOKEN}",
    f"Token {ADMIN_TOKEN}",
    ADMIN_TOKEN,
    f"Bearer {SECRET_KEYS[0]}",  # another secret is not the admin token
    f"Bearer {EVENT_SECRETS[0]}",
    "Bearer é",
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_admin_endpoints_refuse_missing_or_wrong_tokens_and_change_nothing(
    client: TestClient[Any, Any],
    resources: Resources,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    await subscribe(resources, "ada@example.org", study="NCT05879978")
    for authorization in WRONG_AUTHORIZATIONS:
        headers = {} if authorization is None else {"Authorization": authorization}
        resp = await client.request(method, path, json=body, headers=headers)
        assert resp.status == 401, (authorization, resp.status)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["error"] == "admin token required"
        assert_secure(resp)
    async with resources.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0
        assert await session.scalar(select(Subscription.status)) == "confirmed"
    good = await client.request(
        method, path, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert good.status in (200, 201, 404), await good.text()


async def test_a_token_header_that_is_not_text_is_refused_not_crashed(
    client: TestClient[Any, Any],
) -> None:
    """Raw bytes that are not UTF-8 (the token is compared as bytes)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"GET /v1/admin/suppressions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe" + ADMIN_TOKEN.encode() + b"\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


# --- no secret in the logs of the real process ------------------------------------------------


async def test_no_token_or_secret_reaches_the_logs(
    resources: Resources, settings: Settings, tmp_path: Path
) -> None:
    r = resources
    sub = await subscribe(r, "ada@example.org", study="NCT05879978")
    confirm_token = r.tokens.confirm(sub.subscriber_id, "nonce")
    unsubscribe_token = r.tokens.unsubscribe(sub.id)
    manage_token = r.tokens.manage(sub.subscriber_id)
    with socket_port() as port:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
        env.update(
            {
                "NOTIFIER_ENV": "production",
                "NOTIFIER_DATABASE_URL": settings.database_url,
                "NOTIFIER_REDIS_URL": settings.redis_url,
                "NOTIFIER_SMTP_URL": settings.smtp_url,
                "NOTIFIER_PUBLIC_URL": settings.public_url,
                "NOTIFIER_SECRET_KEYS": ",".join(settings.secret_keys),
                "NOTIFIER_EVENT_SECRETS": ",".join(settings.event_secrets),
                "NOTIFIER_ADMIN_TOKEN": settings.admin_token,
                "NOTIFIER_QUEUE_NAME": settings.queue_name,
                "NOTIFIER_LOG_LEVEL": "DEBUG",
            }
        )
        log = tmp_path / "web.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "notifier",
                "web",
                "--port",
                str(port),
                env=env,
                stdout=out,
                stderr=out,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            signatures = await _exercise(base, confirm_token, unsubscribe_token, manage_token)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
    text = log.read_text()
    assert "/v1/subscriptions" in text  # the access log did record the requests
    secrets = [
        ADMIN_TOKEN,
        *SECRET_KEYS,
        *EVENT_SECRETS,
        confirm_token,
        unsubscribe_token,
        manage_token,
        *signatures,
        "Bearer wrong-but-long-enough-token-value",
    ]
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}… found in the log"
    assert "ada@example.org" not in text


class socket_port:
    """A free loopback port, held by nobody once the block is entered."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        return None


async def _exercise(base: str, confirm: str, unsubscribe: str, manage: str) -> list[str]:
    """Requests that carry every kind of secret, answered well and badly."""
    signatures: list[str] = []
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        # A cold start imports everything: allow a busy 2-core CI machine a full minute.
        for _ in range(600):
            try:
                async with http.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/v1/admin/suppressions", {"headers": admin}),
            ("GET", "/v1/admin/subscribers?email=ada@example.org", {"headers": admin}),
            ("GET", "/v1/admin/events/x", {"headers": admin}),
            (
                "GET",
                "/v1/admin/suppressions",
                {"headers": {"Authorization": "Bearer wrong-but-long-enough-token-value"}},
            ),
            ("GET", f"/v1/confirm/{confirm}", {}),
            ("POST", f"/v1/confirm/{confirm}", {}),
            ("GET", f"/v1/unsubscribe/{unsubscribe}", {}),
            ("GET", f"/v1/manage/{manage}", {}),
            ("GET", f"/v1/manage/{manage}x", {}),
            ("POST", "/v1/subscriptions", {"json": {"email": "ada@example.org", "study": "x"}}),
        ]
        for method, path, kwargs in calls:
            async with http.request(method, base + path, **kwargs) as resp:
                await resp.read()
                assert resp.status < 500, (path, resp.status)
        for secret in (EVENT_SECRETS[0], "not-the-secret-" + "z" * 30):
            body = encode([new_study("NCT05879978")])
            headers = signed_headers(body, secret=secret)
            signatures.append(headers["Notifier-Signature"].split("v1=")[1])
            async with http.post(f"{base}/v1/events", data=body, headers=headers) as resp:
                assert resp.status in (202, 401)
    return signatures


async def test_a_client_that_hangs_up_mid_body_is_not_a_dependency_outage(
    client: TestClient[Any, Any], resources: Resources, caplog: pytest.LogCaptureFixture
) -> None:
    """A phone that loses signal while posting a signup: logged as the client's doing and
    counted as 499, never as "dependency unavailable" / 503 (which would page the operator)."""
    from tests.test_metrics import METRICS_AUTH, sample

    async def count(status: str) -> float:
        text = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
        return sample(
            text, "notifier_http_requests_total", route="/v1/subscriptions", status=status
        )

    before = {status: await count(status) for status in ("499", "500", "503")}
    server = client.server
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /v1/subscriptions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"email": "half'
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is waiting for the rest of the body
    writer.close()
    await writer.wait_closed()
    for _ in range(50):
        if await count("499") > before["499"]:
            break
        await asyncio.sleep(0.05)
    assert await count("499") == before["499"] + 1
    assert await count("500") == before["500"]
    assert await count("503") == before["503"]
    assert "dependency unavailable" not in caplog.text, caplog.text
    async with resources.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Subscription)) == 0
