"""Typed conditions end to end (signup -> confirm -> POST /v1/events -> worker -> mail), the
`changes` choice, and GET /v1/conditions suggestions."""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.data.models import Subscription
from notifier.ops.sample_events import build_event, earlier_version, load_records
from notifier.resources import Resources
from tests.conftest import SITE_ORIGIN, run_worker
from tests.events_factory import post_events
from tests.smtp_server import RecordingSMTP
from tests.test_subscriptions import confirm_path, parts

Client = TestClient[Any, Any]
RECORDS = load_records()
JSON = {"Accept": "application/json"}


@pytest.fixture(name="resources")
async def resources_closing_limits(resources: Resources) -> AsyncIterator[Resources]:
    yield resources
    bridge: Any = resources.limits_storage.bridge  # the rate limiter's own client
    await bridge.get_connection().aclose()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"trusted_proxies": ["127.0.0.1/32"]}


async def subscribe_and_confirm(
    client: Client, r: Resources, smtp: RecordingSMTP, email: str, ip: str, **fields: Any
) -> str:
    """Sign up through the API, follow the mailed link, confirm: the confirm mail's text."""
    resp = await client.post(
        "/v1/subscriptions",
        json={"email": email, **fields},
        headers={"X-Forwarded-For": ip, "User-Agent": "TestBrowser/1.0"},
    )
    assert resp.status == 202, await resp.text()
    await run_worker(r)
    text, _ = parts(smtp.to(email)[-1].message)
    path = confirm_path(smtp, email)
    page = await client.get(path)
    assert page.status == 200
    confirmed = await client.post(path, headers=JSON)
    assert confirmed.status == 200, await confirmed.text()
    return text + (await page.text())


def alerts_to(smtp: RecordingSMTP, email: str) -> list[str]:
    """The text part of every alert (not the confirmation) sent to `email`."""
    out = []
    for received in smtp.to(email):
        text, _ = parts(received.message)
        if "/v1/confirm/" not in text:
            out.append(text)
    return out


def melanoma_event() -> dict[str, Any]:
    """A realistic melanoma study (no record in the set has one): a real record's shape, with a
    melanoma trial's own words and CT.gov's MeSH indexing of melanoma (ancestors included)."""
    event = build_event(RECORDS["NCT05907980"], "new_study")
    event["nct_id"] = "NCT09000001"
    event["event_id"] = "melanoma-new-study"
    study = event["study"]
    study.update(
        brief_title="Adjuvant Nivolumab Plus Relatlimab in Resected Stage III-IV Melanoma",
        official_title="A Phase 3 Study of Adjuvant Nivolumab and Relatlimab Versus Nivolumab "
        "in Participants With Completely Resected Stage III-IV Melanoma",
        url="https://clinicaltrials.gov/study/NCT09000001",
        conditions=["Melanoma"],
        keywords=["cutaneous melanoma", "adjuvant"],
        condition_mesh=[{"id": "D000008545", "term": "Melanoma"}],
        condition_mesh_ancestors=[
            {"id": "D000018358", "term": "Neuroendocrine Tumors"},
            {"id": "D000017599", "term": "Neuroectodermal Tumors"},
            {"id": "D000009373", "term": "Neoplasms, Germ Cell and Embryonal"},
            {"id": "D000009369", "term": "Neoplasms"},
        ],
    )
    return event


async def test_typed_conditions_end_to_end(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    lung = await subscribe_and_confirm(
        client, r, smtp, "lung@example.org", "203.0.113.1", condition="lung cancer"
    )
    # What it resolved to, in plain words, on the confirm mail and page.
    assert "lung cancer — including non-small cell and small cell lung cancer" in lung
    await subscribe_and_confirm(
        client, r, smtp, "net@example.org", "203.0.113.2", condition="neuroendocrine tumors"
    )
    await subscribe_and_confirm(
        client, r, smtp, "cancer@example.org", "203.0.113.3", condition="cancer"
    )
    apple = build_event(RECORDS["NCT02856893"], "new_study")
    assert apple["study"]["conditions"] == ["NSCLC"]
    assert not apple["study"]["condition_mesh"]
    eye = build_event(RECORDS["NCT05850520"], "new_study")
    assert {m["term"] for m in eye["study"]["condition_mesh"]} >= {"Neoplasm Metastasis"}
    await post_events(client, [apple, eye, melanoma_event()])
    await run_worker(r)

    lung_alerts = alerts_to(smtp, "lung@example.org")
    assert len(lung_alerts) == 1
    assert "NCT02856893" in lung_alerts[0]
    # Why: the subscriber's own term, then what in the study matched it, in plain words.
    assert (
        "You follow “lung cancer”: this study is about non-small cell lung cancer"
        " (it lists “NSCLC”), a kind of lung cancer." in " ".join(lung_alerts[0].split())
    )
    assert "MeSH" not in lung_alerts[0]
    # MeSH files Melanoma under Neuroendocrine Tumors: a NET subscriber gets no melanoma study.
    assert alerts_to(smtp, "net@example.org") == []
    # The eye study indexed as Neoplasm Metastasis does not reach a cancer subscriber; the
    # NSCLC and melanoma studies do.
    cancer = alerts_to(smtp, "cancer@example.org")
    assert sorted("NCT09000001" in t for t in cancer) == [False, True]
    assert not any("NCT05850520" in t for t in cancer)


async def test_status_only_choice(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    await subscribe_and_confirm(
        client, r, smtp, "status@example.org", "203.0.113.9", study="NCT05879978",
        changes=["status_changed"],
    )  # fmt: skip
    async with r.sessions() as session:
        sub = await session.scalar(select(Subscription))
        assert sub is not None
        assert sub.event_kinds == ["status_changed"]
    record = RECORDS["NCT05879978"]
    dates = build_event(
        record,
        "dates_changed",
        previous=earlier_version(record, primaryCompletionDateStruct={"date": "2020-01"}),
    )
    await post_events(client, [dates])
    await run_worker(r)
    assert alerts_to(smtp, "status@example.org") == []  # a dates-only event sends nothing
    now = earlier_version(record, overallStatus="ACTIVE_NOT_RECRUITING")
    status = build_event(
        now, "status_changed", previous=earlier_version(record, overallStatus="RECRUITING")
    )
    await post_events(client, [status])
    await run_worker(r)
    assert len(alerts_to(smtp, "status@example.org")) == 1  # a status change sends one mail


async def test_changes_are_validated(client: Client) -> None:
    bad = await client.post(
        "/v1/subscriptions",
        json={"email": "a@example.org", "study": "NCT05879978", "changes": ["everything"]},
    )
    assert bad.status == 422
    assert "changes" in (await bad.json())["fields"]
    # A condition may choose new studies and studies that start recruiting, nothing else.
    bad = await client.post(
        "/v1/subscriptions",
        json={"email": "a@example.org", "condition": "asthma", "changes": ["results_posted"]},
    )
    assert bad.status == 422
    # A site's mesh_id must be a MeSH disease descriptor.
    bad = await client.post(
        "/v1/subscriptions",
        json={"email": "a@example.org", "condition": "asthma", "mesh_id": "D999999"},
    )
    assert bad.status == 422


async def test_a_condition_can_choose_studies_that_start_recruiting(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    r = resources
    for email, ip, changes in (
        ("both@example.org", "203.0.113.20", ["new_study", "starts_recruiting"]),
        ("new@example.org", "203.0.113.21", None),
    ):
        await subscribe_and_confirm(
            client, r, smtp, email, ip, condition="small cell lung cancer", changes=changes
        )
    record = copy.deepcopy(RECORDS["NCT05879978"])
    recruiting = build_event(
        earlier_version(record, overallStatus="RECRUITING"),
        "status_changed",
        previous=earlier_version(record, overallStatus="NOT_YET_RECRUITING"),
    )
    await post_events(client, [recruiting])
    await run_worker(r)
    assert len(alerts_to(smtp, "both@example.org")) == 1
    assert alerts_to(smtp, "new@example.org") == []


# -- suggestions --------------------------------------------------------------------------------


async def suggest(client: Client, q: str, **params: Any) -> Any:
    resp = await client.get("/v1/conditions", params={"q": q, **params})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_suggestions_rank_what_people_mean_first(client: Client) -> None:
    first = (await suggest(client, "heart attack"))["conditions"][0]
    assert first["name"] == "Myocardial Infarction"
    assert first["mesh_id"] == "D009203"
    assert first["label"] == "Heart attack"
    first = (await suggest(client, "nsclc"))["conditions"][0]
    assert first["name"] == "Carcinoma, Non-Small-Cell Lung"
    body = await suggest(client, "lung canc", limit=8)
    assert 1 <= len(body["conditions"]) <= 8
    assert body["conditions"][0]["name"] == "Lung Neoplasms"
    assert set(body["conditions"][0]) == {"mesh_id", "name", "label", "matched"}


async def test_suggestions_refuse_short_queries_and_ignore_junk(client: Client) -> None:
    for q in ("", "a"):
        resp = await client.get("/v1/conditions", params={"q": q})
        assert resp.status == 422
    assert (await client.get("/v1/conditions")).status == 422
    assert (await client.get("/v1/conditions", params={"q": "lung", "limit": "0"})).status == 422
    junk = "zq#x8~" * 33 + "zz"
    assert len(junk) == 200
    started = time.perf_counter()
    assert await suggest(client, junk) == {"conditions": []}
    assert time.perf_counter() - started < 0.5


async def test_suggestions_are_cacheable_and_cors_for_the_site(client: Client) -> None:
    resp = await client.get(
        "/v1/conditions", params={"q": "asthma"}, headers={"Origin": SITE_ORIGIN}
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == SITE_ORIGIN
    assert "max-age" in resp.headers["Cache-Control"]
    other = await client.get(
        "/v1/conditions", params={"q": "asthma"}, headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers
