"""POST /v1/studies and GET /v1/studies/{nct_id}: records in, derived events out, through the
real worker and the real SMTP server; the catalogue the pages and mails use."""

from __future__ import annotations

import asyncio
import html
import json
from datetime import date
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from notifier.core.ctgov import parse_record
from notifier.core.studies import Policy, store_records
from notifier.core.study_diff import event_id_for
from notifier.data.models import Event, Subscriber
from notifier.data.study_queries import sites_within, study_info, study_titles
from notifier.data.study_tables import Study, StudySite, StudyVersion
from notifier.queue import enqueue_confirmation
from notifier.resources import Resources
from tests.conftest import run_worker
from tests.events_factory import post_events, record, signed_headers, subscribe
from tests.smtp_server import RecordingSMTP

NCT = "NCT05304754"  # PHINK: recruiting at 10 sites, first posted 2022
TITLE = record(NCT)["protocolSection"]["identificationModule"]["briefTitle"]


async def post(client: TestClient[Any, Any], body_obj: Any) -> tuple[int, Any]:
    body = json.dumps(body_obj).encode()
    resp = await client.post("/v1/studies", data=body, headers=signed_headers(body))
    return resp.status, await resp.json()


def changed_record() -> dict[str, Any]:
    """The next CT.gov version: no longer recruiting, and one site closed."""
    rec = record(NCT)
    status = rec["protocolSection"]["statusModule"]
    status["overallStatus"] = "ACTIVE_NOT_RECRUITING"
    status["lastUpdateSubmitDate"] = "2022-09-01"
    status["lastUpdatePostDateStruct"] = {"date": "2022-09-05", "type": "ACTUAL"}
    rec["protocolSection"]["contactsLocationsModule"]["locations"][0]["status"] = "COMPLETED"
    rec["derivedSection"]["miscInfoModule"]["versionHolder"] = "2022-09-06"
    return rec


async def count(r: Resources, model: Any) -> int:
    async with r.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_status_and_a_site_change_mail_the_followers_once_each(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    await subscribe(resources, "pat@example.org", study=NCT)
    status, body = await post(client, record(NCT))
    assert status == 202, body
    # First posted in 2022, long before the window: stored, no new_study, nobody mailed.
    assert body["results"] == [
        {"nct_id": NCT, "outcome": "new", "version_key": "2022-03-30/2022-03-31", "kinds": []}
    ]
    assert (body["new"], body["events"]) == (1, 0)
    await run_worker(resources)
    assert smtp.messages == []

    status, body = await post(client, changed_record())
    assert status == 202, body
    assert body["results"][0]["outcome"] == "changed"
    assert body["results"][0]["kinds"] == ["status_changed", "recruitment_sites_changed"]
    assert body["events"] == 2
    await run_worker(resources)
    mails = sorted((m.message for m in smtp.messages), key=lambda m: str(m["Subject"]))
    assert len(mails) == 2
    subjects = [str(m["Subject"]) for m in mails]
    assert subjects[0].startswith("Recruiting → Active, not recruiting · NCT05304754")
    assert "site" in subjects[1].lower()
    texts = [m.get_body(("plain",)).get_content() for m in mails]  # type: ignore[union-attr]
    assert "Status: Recruiting → Active, not recruiting" in texts[0]
    site = record(NCT)["protocolSection"]["contactsLocationsModule"]["locations"][0]
    assert f"{site['facility']}" in texts[1]
    assert "Recruiting → Completed" in texts[1]
    for text in texts:
        assert TITLE in text  # the alert's study block names the study

    # The same record again: unchanged, no event, no mail.
    smtp.messages.clear()
    events_before = await count(resources, Event)
    status, body = await post(client, changed_record())
    assert status == 202
    assert body["results"][0]["outcome"] == "unchanged"
    assert (body["unchanged"], body["events"]) == (1, 0)
    await run_worker(resources)
    assert smtp.messages == []
    assert await count(resources, Event) == events_before


async def test_a_batch_with_one_bad_record_names_it_and_stores_nothing(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    bad = record("NCT05879978")
    del bad["protocolSection"]["statusModule"]["overallStatus"]
    status, body = await post(client, {"studies": [record(NCT), bad, record("NCT06610240")]})
    assert status == 422
    assert body["fields"] == {
        "studies.1": "NCT05879978: protocolSection.statusModule.overallStatus: missing"
    }
    assert await count(resources, Study) == 0
    assert await count(resources, StudyVersion) == 0
    assert await count(resources, Event) == 0


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({"studies": []}, {"studies": "must be a non-empty list"}),
        ([1, 2], {"body": "must be a study object or {studies: [...]}"}),
        (
            {"protocolSection": "x"},
            {"study": "record: protocolSection: must be an object, not a string"},
        ),
    ],
)
async def test_bodies_that_are_no_records(
    client: TestClient[Any, Any], case: Any, expected: dict[str, str]
) -> None:
    status, body = await post(client, case)
    assert status == 422
    assert body["fields"] == expected


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_study_batch": 3, "max_study_body_bytes": 200_000}


async def test_batches_are_bounded_and_signed(client: TestClient[Any, Any]) -> None:
    status, body = await post(client, {"studies": [record(NCT)] * 4})
    assert status == 422
    assert body["fields"] == {"studies": "at most 3 records per request"}
    raw = json.dumps(record(NCT)).encode()
    resp = await client.post("/v1/studies", data=raw, headers={"Notifier-Signature": "t=1,v1=00"})
    assert resp.status == 401
    big = json.dumps({"studies": [record("NCT05883644")] * 20}).encode()
    assert len(big) > 200_000
    resp = await client.post("/v1/studies", data=big, headers=signed_headers(big))
    assert resp.status == 413


async def test_the_same_change_as_an_event_and_as_a_record_is_one_event(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    await post(client, record(NCT))
    derived = event_id_for(NCT, "status_changed", "2022-09-01/2022-09-05")
    event = {
        "event_id": derived,
        "nct_id": NCT,
        "change_kind": "status_changed",
        "occurred_on": "2022-09-05",
        "study": {"brief_title": TITLE, "overall_status": "ACTIVE_NOT_RECRUITING"},
        "changes": [
            {
                "path": "protocolSection.statusModule.overallStatus",
                "old": "RECRUITING",
                "new": "ACTIVE_NOT_RECRUITING",
            }
        ],
    }
    assert await post_events(client, [event]) == {"accepted": 1, "duplicates": 0}
    status, body = await post(client, changed_record())
    assert status == 202
    assert (body["events"], body["duplicates"]) == (1, 1)  # the site change is the new one
    assert await count(resources, Event) == 2


async def test_a_study_first_posted_within_the_window_is_new_and_a_stale_version_is_ignored(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    rec = record("NCT06610240")
    today = date.today().isoformat()
    rec["protocolSection"]["statusModule"]["studyFirstPostDateStruct"] = {
        "date": today,
        "type": "ACTUAL",
    }
    rec["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"] = {
        "date": today,
        "type": "ACTUAL",
    }
    status, body = await post(client, rec)
    assert status == 202
    assert body["results"][0]["kinds"] == ["new_study"]
    older = record("NCT06610240")
    older["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = "2024-01-01"
    older["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"
    _status, body = await post(client, older)
    assert body["results"][0]["outcome"] == "stale"
    assert body["events"] == 0


async def test_versions_are_bounded_and_concurrent_posts_derive_once(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    await post(client, record(NCT))
    kept = resources.settings.study_versions_kept
    for day in range(1, kept + 3):
        rec = record(NCT)
        status = rec["protocolSection"]["statusModule"]
        status["lastUpdateSubmitDate"] = f"2023-01-{day:02d}"
        status["lastUpdatePostDateStruct"]["date"] = f"2023-01-{day:02d}"
        status["whyStopped"] = f"reason {day}"  # a material change each time
        assert (await post(client, rec))[1]["results"][0]["outcome"] == "changed"
    assert await count(resources, StudyVersion) == kept
    async with resources.sessions() as session:
        assert await session.scalar(select(func.max(StudyVersion.seq))) == kept + 3

    # Two posts of the same new version at once: one derives, the other finds it stored.
    newer = changed_record()
    newer["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = "2024-01-01"
    answers = await asyncio.gather(*(post(client, newer) for _ in range(2)))
    outcomes = sorted(a[1]["results"][0]["outcome"] for a in answers)
    assert outcomes == ["changed", "unchanged"]
    assert sum(a[1]["events"] for a in answers) == 2


async def test_the_catalogue_knows_titles_from_records_and_from_events(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    await post(client, record(NCT))
    event_only = {
        "event_id": "e-1",
        "nct_id": "NCT01234567",
        "change_kind": "study_updated",
        "occurred_on": "2024-01-02",
        "study": {"brief_title": "A study only events mention", "acronym": "EVT"},
    }
    await post_events(client, [event_only])
    async with resources.sessions() as session:
        titles = await study_titles(session, [NCT, "NCT01234567", "NCT09999999"])
        short = await study_titles(session, [NCT, "NCT01234567"], short=True)
        info = await study_info(session, NCT)
    assert titles == {NCT: TITLE, "NCT01234567": "A study only events mention"}
    assert short == {NCT: "PHINK", "NCT01234567": "EVT"}
    assert info is not None
    assert info.from_record
    assert info.overall_status == "RECRUITING"
    assert info.sites.total == 10

    # An event about a study with a record does not overwrite the record's facts.
    await post_events(client, [{**event_only, "event_id": "e-2", "nct_id": NCT}])
    async with resources.sessions() as session:
        assert (await study_titles(session, [NCT]))[NCT] == TITLE


async def test_get_study_is_public_cacheable_and_resolves_conditions(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    await post(client, record(NCT))
    resp = await client.get(f"/v1/studies/{NCT.lower()}")
    assert resp.status == 200
    assert resp.headers["Cache-Control"].startswith("public, max-age=")
    body = await resp.json()
    assert (body["nct_id"], body["title"], body["short_title"]) == (NCT, TITLE, "PHINK")
    assert body["status_label"] == "Recruiting"
    assert body["sites"]["total"] == 10
    assert sum(body["sites"]["by_country"].values()) == 10
    assert body["conditions"]
    assert all("resolves_to" in c for c in body["conditions"])
    assert any(c["resolves_to"] for c in body["conditions"])
    again = await client.get(f"/v1/studies/{NCT}", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304
    assert (await client.get("/v1/studies/NCT09999999")).status == 404
    # Non-ASCII digits are no NCT id: no route, 404.
    assert (await client.get("/v1/studies/NCT0530475\u0664")).status == 404


async def test_sites_are_kept_current_and_found_by_distance(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    await post(client, record(NCT))
    first = record(NCT)["protocolSection"]["contactsLocationsModule"]["locations"][0]
    lat, lon = first["geoPoint"]["lat"], first["geoPoint"]["lon"]
    async with resources.sessions() as session:
        near = await sites_within(session, lat, lon, 5)
        assert near
        assert near[0].nct_id == NCT
        assert near[0].km < 0.01
        statuses = dict((await session.execute(select(StudySite.facility, StudySite.status))).all())
    assert statuses[first["facility"]] == "RECRUITING"
    await post(client, changed_record())
    async with resources.sessions() as session:
        statuses = dict((await session.execute(select(StudySite.facility, StudySite.status))).all())
    assert statuses[first["facility"]] == "COMPLETED"
    assert await count(resources, StudySite) == 10


async def test_bootstrap_stores_snapshots_without_events(resources: Resources) -> None:
    rec = parse_record(record(NCT))
    policy = Policy(versions_kept=2, new_study_window_days=100_000, alerts=False)
    async with resources.sessions.begin() as session:
        done = await store_records(session, [rec], policy, today=date.today())
    assert done.outcomes[0].kinds == ["new_study"]  # what it would have said
    assert done.stored.new_pks == []
    assert await count(resources, Event) == 0
    assert await count(resources, StudyVersion) == 1


async def test_the_confirm_page_and_mail_name_the_study_by_title_and_status(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    await post(client, record(NCT))
    sub = await subscribe(resources, "new@example.org", study=NCT, status="pending")
    async with resources.sessions.begin() as session:
        subscriber = await session.get(Subscriber, sub.subscriber_id)
        assert subscriber is not None
        subscriber.confirm_nonce = "n" * 32
    token = resources.tokens.confirm(sub.subscriber_id, "n" * 32)
    resp = await client.get(f"/v1/confirm/{token}")
    page = await resp.text()
    assert resp.status == 200
    assert f"every change to the study “{TITLE}” ({NCT})" in html.unescape(page)
    assert "currently Recruiting" in page

    await enqueue_confirmation(resources, sub.subscriber_id)
    await run_worker(resources)
    (mail,) = [m.message for m in smtp.messages]
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert TITLE in text


async def test_the_alert_names_the_study_by_its_short_title_too(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    await post(client, record(NCT))
    await subscribe(resources, "pat@example.org", study=NCT)
    await post(client, changed_record())
    await run_worker(resources)
    for received in smtp.messages:
        text = received.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert f"{TITLE}\nPHINK · {NCT} · Active, not recruiting" in text.replace("\r\n", "\n")
