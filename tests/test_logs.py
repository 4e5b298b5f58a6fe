"""JSON logs: every line of a request carries its id (also the X-Request-Id header), and no line
ever holds a token, a secret or a full address, whatever the flow."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from notifier import logs
from notifier.app import create_app
from notifier.core.tokens import Tokens
from notifier.logs import JSONFormatter, mask, secrets_of, setup_logging
from notifier.resources import Resources
from notifier.settings import Settings
from tests.conftest import ADMIN_TOKEN, EVENT_SECRETS, PUBLIC_URL, SECRET_KEYS, run_worker
from tests.events_factory import post_events, status_change
from tests.smtp_server import RecordingSMTP
from tests.test_subscriptions import (  # noqa: F401  # `resources` is a fixture override
    resources_closing_limits,
)

ADA = "ada@example.org"
BOB = "bob@example.org"
NCT = "NCT05879978"


@dataclass
class Captured:
    stream: io.StringIO

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def raw(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def captured(settings: Settings) -> Iterator[Captured]:
    """The production logging setup (at DEBUG, to see everything) writing into a buffer."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("alembic", "arq.worker", "mail.log")}
    stream = io.StringIO()
    setup_logging("DEBUG", secrets=secrets_of(settings), stream=stream)
    # The test relay (aiosmtpd) dumps whole messages at DEBUG: its log, not the service's.
    logging.getLogger("mail.log").setLevel(logging.INFO)
    yield Captured(stream)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)


def test_mask_hides_addresses_token_paths_tokens_and_secrets() -> None:
    tokens = Tokens(SECRET_KEYS, 3600)
    confirm, unsubscribe = tokens.confirm(7, "n" * 32), tokens.unsubscribe(123456)
    text = (
        f"mail to Ada.Lovelace+trials@Example.org failed; "
        f"GET {PUBLIC_URL}/v1/confirm/{confirm}?x=1 "
        f"token={unsubscribe} key={SECRET_KEYS[0]} admin {ADMIN_TOKEN} "
        f"aiohttp.web_exceptions.HTTPRequestEntityTooLarge"
    )
    masked = mask(text, [SECRET_KEYS[0], ADMIN_TOKEN])
    assert "A***@Example.org" in masked
    assert f"{PUBLIC_URL}/v1/confirm/***?x=1" in masked
    for secret in ("Lovelace", confirm, unsubscribe, SECRET_KEYS[0], ADMIN_TOKEN):
        assert secret not in masked
    assert "token=*** key=*** admin ***" in masked
    # A token cut by a line break (quoted-printable, say) is caught by the shape of its tail.
    assert mask(f"…/v1/confirm/{confirm[:20]}\n{confirm[20:]}") == "…/v1/confirm/***\n***"
    # Dotted names in tracebacks are not mistaken for tokens.
    assert "aiohttp.web_exceptions.HTTPRequestEntityTooLarge" in masked


def test_secrets_of_settings_include_passwords_in_urls(settings: Settings) -> None:
    with_passwords = settings.model_copy(
        update={
            "smtp_url": "smtp://relay:p%40ss-word-smtp@mail.example.org:587",
            "email_hash_key": "hash-key-" + "h" * 30,
            "redis_url": "redis+sentinel://:redis-data-pass@s1:26379,s2:26379/mymaster/0",
            "redis_sentinel_password": "sentinel-pass-word",
        }
    )
    found = secrets_of(with_passwords)
    assert {*SECRET_KEYS, *EVENT_SECRETS, ADMIN_TOKEN, "hash-key-" + "h" * 30} <= set(found)
    assert {"p%40ss-word-smtp", "p@ss-word-smtp"} <= set(found)
    assert {"redis-data-pass", "sentinel-pass-word"} <= set(found)


def test_lines_are_json_with_extras_and_the_current_request_id(captured: Captured) -> None:
    log = logging.getLogger("notifier.test")
    token = logs.REQUEST_ID.set("req-1")
    try:
        log.info("sent to %s", ADA, extra={"delivery": 42, "note": f"for {ADA}"})
    finally:
        logs.REQUEST_ID.reset(token)
    log.warning("outside any request")
    first, second = captured.lines()
    assert first["request_id"] == "req-1"
    assert first["msg"] == "sent to a***@example.org"
    assert (first["level"], first["logger"], first["delivery"]) == ("info", "notifier.test", 42)
    assert first["note"] == "for a***@example.org"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["ts"])
    assert "request_id" not in second


def test_exceptions_are_masked_too() -> None:
    formatter = JSONFormatter([ADMIN_TOKEN])
    try:
        raise ValueError(f"refused {ADA} with {ADMIN_TOKEN}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), None)
        record.exc_info = sys.exc_info()
    entry = json.loads(formatter.format(record))
    assert "ValueError: refused a***@example.org with ***" in entry["exc"]


@pytest.fixture
async def probe_client(resources: Resources) -> AsyncIterator[TestClient[Any, Any]]:
    """The real app plus one route that logs from inside a handler."""
    app = create_app(resources.settings, resources)

    async def probe(request: web.Request) -> web.Response:
        logging.getLogger("notifier.probe").info("inside the handler")
        return web.json_response({})

    app.router.add_get("/_probe", probe)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def test_a_requests_lines_carry_its_id(
    probe_client: TestClient[Any, Any], captured: Captured
) -> None:
    given = await probe_client.get("/_probe", headers={"X-Request-Id": "abc-123"})
    made = await probe_client.get("/_probe")  # same keep-alive connection: a new id
    bad = await probe_client.get("/_probe", headers={"X-Request-Id": "no spaces; or <tags>"})
    ids = [r.headers["X-Request-Id"] for r in (given, made, bad)]
    assert ids[0] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", ids[1])
    assert re.fullmatch(r"[0-9a-f]{32}", ids[2])
    logging.getLogger("notifier.probe").info("after the requests")

    lines = [line for line in captured.lines() if line["logger"] != "aiohttp.access"]
    for rid in ids:
        mine = [line for line in lines if line.get("request_id") == rid]
        assert [line["logger"] for line in mine] == ["notifier.probe", "notifier.access"]
        access = mine[1]
        assert (access["method"], access["route"], access["status"]) == ("GET", "/_probe", 200)
        assert isinstance(access["ms"], float)
        assert access["msg"].startswith("GET /_probe 200 ")
    assert "request_id" not in lines[-1]  # nothing leaks past the request


async def test_access_lines_name_the_route_never_the_path(
    client: TestClient[Any, Any], resources: Resources, captured: Captured
) -> None:
    token = resources.tokens.unsubscribe(99)
    resp = await client.get(f"/v1/unsubscribe/{token}?email={ADA}")
    assert resp.status == 200
    await client.get("/no/such/page")
    await client.get("/healthz")
    access = [line for line in captured.lines() if line["logger"] == "notifier.access"]
    assert [(a["route"], a["status"], a["level"]) for a in access] == [
        ("/v1/unsubscribe/{token}", 200, "info"),
        ("unmatched", 404, "info"),
        ("/healthz", 200, "debug"),  # probes every few seconds: below INFO
    ]
    assert token not in captured.raw()
    assert ADA not in captured.raw()


async def test_a_whole_flow_logs_no_token_secret_or_address(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP, captured: Captured
) -> None:
    # Signup, confirm (the link from the mail), alert, unsubscribe, manage, admin export.
    resp = await client.post("/v1/subscriptions", json={"email": ADA, "study": NCT})
    assert resp.status == 202
    # A relay that names the address in its refusal, as real ones do.
    smtp.reject[BOB] = f"550 5.1.1 <{BOB}>: Recipient address rejected"
    form = {"email": BOB, "study": NCT}
    assert (await client.post("/v1/subscriptions", data=form, allow_redirects=False)).status == 303
    await run_worker(resources)
    text = smtp.to(ADA)[-1].message.get_body(("plain",))
    assert text is not None
    confirm = re.search(rf"{re.escape(PUBLIC_URL)}(/v1/confirm/([\w.-]+))", text.get_content())
    assert confirm
    assert (await client.get(confirm.group(1))).status == 200
    assert (await client.post(confirm.group(1))).status == 200

    await post_events(client, [status_change(NCT, "RECRUITING", "COMPLETED")])
    await run_worker(resources)
    alert = smtp.to(ADA)[-1].message
    unsubscribe = alert["List-Unsubscribe"].strip("<>").removeprefix(PUBLIC_URL)
    body = alert.get_body(("plain",))
    assert body is not None
    manage = re.search(r"/v1/manage/([\w.-]+)", body.get_content())
    assert manage
    assert (await client.get(unsubscribe)).status == 200
    assert (await client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})).status == 200
    assert (await client.get(manage.group(0))).status == 200
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    resp = await client.get("/v1/admin/subscribers", params={"email": ADA}, headers=auth)
    assert resp.status == 200
    wrong = {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}x"}
    assert (await client.get("/v1/admin/subscribers", headers=wrong)).status == 401

    lines = captured.lines()  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    routes = {line["route"] for line in lines if line["logger"] == "notifier.access"}
    assert {
        "/v1/subscriptions",
        "/v1/confirm/{token}",
        "/v1/events",
        "/v1/unsubscribe/{token}",
        "/v1/manage/{token}",
        "/v1/admin/subscribers",
    } <= routes
    raw = captured.raw()
    assert "b***@example.org" in raw  # the relay's refusal was logged, masked
    tokens = [confirm.group(2), unsubscribe.rsplit("/", 1)[1], manage.group(1)]
    secrets = [*SECRET_KEYS, *EVENT_SECRETS, ADMIN_TOKEN]
    for forbidden in [ADA, BOB, *tokens, *secrets]:
        assert forbidden not in raw, forbidden


def test_internationalised_addresses_are_masked_too() -> None:
    """Found in review: relays quote non-ASCII addresses in their errors, which get logged."""
    from notifier.logs import mask

    assert (
        mask("550 5.1.1 <josé.garcía@example.es> unknown") == "550 5.1.1 <j***@example.es> unknown"
    )
    assert "jörg" not in mask("to jörg@example.de")


async def test_a_fan_out_logs_ids_never_addresses(
    client: TestClient[Any, Any],
    resources: Resources,
    smtp: RecordingSMTP,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No log record of a fan-out holds an address, checked on the records themselves, before
    any formatter masks them (a log shipper may read those): sent mail is logged by delivery
    and subscriber id, a refusal by ids and the masked reply. Nor do the metrics."""
    from tests.factories import make_subscription

    addresses = [f"reader{i}@example.org" for i in range(3)]
    async with resources.sessions.begin() as session:
        for address in addresses:
            await make_subscription(session, resources, email=address, label=NCT)
    smtp.reject[addresses[0]] = f"550 5.1.1 <{addresses[0]}>: Recipient address rejected"
    caplog.set_level(logging.DEBUG, logger="notifier")
    await post_events(client, [status_change(NCT, "RECRUITING", "COMPLETED")])
    await run_worker(resources)
    assert len(smtp.to(addresses[1])) == 1
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("notifier")]
    assert any(m.startswith("mail sent: alert for event") for m in ours), ours
    assert any("refused" in m for m in ours), ours
    for message in ours:
        assert not re.search(r"[\w.+-]+@[\w-]+\.\w", message), message
    # Nor do the metrics (labels are outcomes, kinds and route templates).
    from prometheus_client import generate_latest

    from notifier.metrics import REGISTRY

    assert "@" not in generate_latest(REGISTRY).decode()
