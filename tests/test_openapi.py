"""/openapi.json is complete (every route, nothing else) and true: schemathesis, all checks, against
the real app on a live server, finds nothing."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES
from schemathesis.engine import Status, events, from_schema

from notifier.pipeline import sign
from tests.conftest import ADMIN_TOKEN, EVENT_SECRETS

POSITIVE_DEFAULT = list(POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES)
METHODS = frozenset({"get", "post", "put", "patch", "delete"})
# aiohttp adds HEAD to every GET route and aiohttp_cors an OPTIONS preflight route: both follow
# from the routes documented, and OpenAPI does not list them.
IMPLIED = frozenset({"HEAD", "OPTIONS"})


def router_operations(client: TestClient[Any, Any]) -> set[tuple[str, str]]:
    found = set()
    for route in client.app.router.routes():
        if route.method in IMPLIED or route.resource is None:
            continue
        # "/v1/admin/events/{event_id:.{1,200}}" -> "/v1/admin/events/{event_id}"
        path = re.sub(r"\{(\w+):[^}]*\}+", r"{\1}", route.resource.canonical)
        found.add((route.method.lower(), path))
    return found


async def spec_of(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec: dict[str, Any] = await resp.json()
    return spec


async def test_every_route_is_in_the_spec_and_every_operation_is_routed(
    client: TestClient[Any, Any],
) -> None:
    spec = await spec_of(client)
    documented = {
        (method, path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in METHODS
    }
    routed = router_operations(client)
    assert routed - documented == set(), "routes missing from /openapi.json"
    assert documented - routed == set(), "operations in /openapi.json that no route serves"


async def test_every_operation_documents_its_answers(client: TestClient[Any, Any]) -> None:
    spec = await spec_of(client)
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            assert op.get("summary"), where
            assert any(code.startswith("2") or code == "303" for code in op["responses"]), where
            if op.get("security"):
                assert "401" in op["responses"], where
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert f"{{{param['name']}}}" in path, where


# --- schemathesis -----------------------------------------------------------------------------


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Generated requests must reach the handlers, not the per-IP limit; and a generated batch of
    # 501 long bounces (over maxItems: a 422 expected) must not be cut short by the 413 first.
    return {"ip_requests_per_minute": 100_000, "max_body_bytes": 1024 * 1024}


class SignEvents(requests.auth.AuthBase):
    """Signs the exact bytes requests is about to send, as the sync pipeline does. Only a
    request that carries a Notifier-Signature (schemathesis sends one for the documented
    scheme) is signed, so its checks that leave the header out still see a 401."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if "Notifier-Signature" in r.headers:
            body = r.body or b""
            raw = body.encode() if isinstance(body, str) else body
            assert isinstance(raw, bytes)  # schemathesis sends JSON bodies whole
            r.headers["Notifier-Signature"] = sign(raw, EVENT_SECRETS[0])
        return r


EVENT_STATUSES: list[int] = []  # what POST /v1/events answered: proof the signing took


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.path == "/v1/events":
        kwargs["auth"] = SignEvents()


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if case.operation.path == "/v1/events":
        EVENT_STATUSES.append(response.status_code)


def run_schemathesis(
    base_url: str, spec: dict[str, Any], max_examples: int = 10
) -> tuple[list[str], int]:
    """Every phase and every check of schemathesis; returns the failures and the cases run."""
    config = SchemathesisConfig.from_dict(
        {
            "base-url": base_url,
            "seed": 20240607,
            "max-failures": 50,
            # ASCII: JSON Schema cannot spell "no Unicode format characters", which the server
            # refuses in every text field; tests/test_hostile_input.py covers Unicode instead.
            # No U+0000: PostgreSQL cannot store it, the server refuses it (422) anywhere in an
            # event, and JSON Schema cannot say so for the unknown fields events may carry.
            "generation": {
                "max-examples": max_examples,
                "database": "none",
                "codec": "ascii",
                "allow-x00": False,
            },
            "phases": {"stateful": {"max-steps": 20}},
            "headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            "request-timeout": 10,
            # The free-text path parameter event_id is fine; that hypothesis drops many of its
            # drafts (unsafe in a URL path) says nothing about the API.
            "suppress-health-check": ["filter_too_much"],
            "operations": [
                {
                    # Signup checks meaning as well as syntax (a condition must name one in
                    # words, not be a link; the time zone must exist; a redirect must be on an
                    # allowed origin): schema-valid input may get the documented 422.
                    "include-name": "POST /v1/subscriptions",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": [*POSITIVE_DEFAULT, "422"]
                        }
                    },
                }
            ],
        }
    )
    schema = schemathesis.openapi.from_dict(spec, config=config)
    failures: list[str] = []
    cases = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        failures.append(
                            f"{event.recorder.label} [{check.name}] {failure.title}: "
                            f"{failure.message}\n  {check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: error {event.value!r}")
        elif isinstance(event, events.FatalError):
            failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            failures.extend(f"[run] {f.title}: {f.message}" for f in event.failures)
    return sorted(set(failures)), cases


@pytest.mark.postgres_only
async def test_schemathesis_finds_nothing(client: TestClient[Any, Any]) -> None:
    spec = await spec_of(client)
    base_url = str(client.make_url("")).rstrip("/")
    # Its HTTP client blocks: run it in a thread while this loop serves the app.
    examples = int(os.environ.get("NOTIFIER_SCHEMATHESIS_EXAMPLES", "10"))  # more locally
    EVENT_STATUSES.clear()
    failures, cases = await asyncio.to_thread(run_schemathesis, base_url, spec, examples)
    assert cases >= 200, f"only {cases} cases ran"
    assert failures == [], "\n\n".join(failures)
    assert 202 in EVENT_STATUSES, sorted(set(EVENT_STATUSES))  # signed events got through
    sys.stderr.write(f"schemathesis: {cases} cases, {examples} examples, no failures\n")
