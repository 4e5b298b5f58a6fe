"""Issue 18, finding 8: NCT ids are ASCII everywhere, and the spec's patterns say exactly what
the server accepts (event ids, admin addresses); the production spec lists only what production
serves."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.core.normalize import normalize_mesh_id, normalize_nct
from notifier.core.signing import SignatureError, check_header
from notifier.pipeline import encode
from notifier.resources import Resources
from tests.conftest import ADMIN_TOKEN
from tests.events_factory import new_study, signed_headers

NON_ASCII_DIGITS = ["NCT0587997\u0668", "NCT0587997\uff18", "NCT\u0660\u0665879978"]


@pytest.mark.parametrize("value", NON_ASCII_DIGITS)
def test_non_ascii_digits_are_not_an_nct_id(value: str) -> None:
    assert normalize_nct(value) is None
    assert normalize_mesh_id("D05575\u0662") is None


@pytest.mark.parametrize("value", NON_ASCII_DIGITS)
async def test_signup_and_events_refuse_non_ascii_digits(
    client: TestClient[Any, Any], value: str
) -> None:
    resp = await client.post("/v1/subscriptions", json={"email": "a@example.org", "study": value})
    assert resp.status == 422
    assert "study" in (await resp.json())["fields"]
    event = new_study("NCT05879978", event_id=f"digits-{value}")
    event["nct_id"] = value
    alias = new_study("NCT05879978", event_id=f"alias-{value}")
    alias["nct_id_aliases"] = [value]
    for item in (event, alias):
        body = encode([item])
        resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
        assert resp.status == 422, await resp.text()


def test_a_signature_timestamp_in_other_digits_is_refused() -> None:
    now = int(time.time())
    arabic = str(now).translate(
        str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")
    )
    with pytest.raises(SignatureError):
        check_header(f"t={arabic},v1={'ab' * 32}", now)


async def _spec(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec: dict[str, Any] = await resp.json()
    return spec


async def test_the_event_schema_has_the_nct_pattern_the_server_uses(
    client: TestClient[Any, Any],
) -> None:
    schema = (await _spec(client))["components"]["schemas"]["TrialChangeEvent"]
    pattern = schema["properties"]["nct_id"]["pattern"]
    alias_pattern = schema["properties"]["nct_id_aliases"]["items"]["pattern"]
    assert pattern == alias_pattern
    for value in [*NON_ASCII_DIGITS, "NCT05879978", " nct05879978\t", "NCT5879978", "NCT 0587"]:
        assert (re.fullmatch(pattern, value) is not None) == (normalize_nct(value) is not None), (
            value
        )


ADDRESSES = [
    "ada@example.org",
    "Ada.Lovelace+x@Example.org",
    "ünï@exämple.org",
    "a\u200b@example.org",  # zero-width space: a format character
    "a\ufeff@example.org",
    "a\u0085@example.org",  # NEL: a C1 control
    "a\u00a0@example.org",
    "a b@example.org",
    "a@b@example.org",
    "@example.org",
    "a\u2028@example.org",
]


@pytest.mark.parametrize("address", ADDRESSES)
async def test_admin_address_pattern_is_what_the_server_accepts(
    client: TestClient[Any, Any], address: str
) -> None:
    spec = await _spec(client)
    [param] = [
        p
        for p in spec["paths"]["/v1/admin/subscribers"]["get"]["parameters"]
        if p["name"] == "email"
    ]
    pattern = param["schema"]["pattern"]
    resp = await client.get(
        "/v1/admin/subscribers",
        params={"email": address},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert resp.status in (200, 422)
    assert (resp.status == 200) == (re.fullmatch(pattern, address) is not None), address


async def test_demo_pages_are_only_in_the_dev_spec(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    production = await _spec(client)
    assert not [p for p in production["paths"] if p.startswith("/demo/")]
    assert "/static/notifier-form.js" in production["paths"]
    dev = resources.settings.model_copy(update={"env": "dev"})
    async with TestClient(TestServer(create_app(dev, replace(resources, settings=dev)))) as c:
        spec = await _spec(c)
    assert {"/demo/study", "/demo/condition"} <= set(spec["paths"])
