"""Raw ClinicalTrials.gov records -> trial-change events, on the real records in tests/data."""

from __future__ import annotations

import copy
import json
import zlib
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock file
import pytest

from notifier.core.ctgov import (
    MAX_LOCATIONS,
    RecordError,
    StudyRecord,
    load_snapshot,
    normalize_mesh_id,
    parse_record,
    snapshot_bytes,
)
from notifier.core.study_diff import KINDS, diff, event_id_for, is_stale, material_fingerprint

DATA = Path(__file__).parent / "data"
STUDIES = sorted((DATA / "studies").glob("NCT*.json"))
SCHEMA = json.loads((DATA / "trial_change_event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
TODAY = date(2026, 1, 15)
WINDOW = 30
Raw = dict[str, Any]


def raw(nct_id: str) -> Raw:
    data: Raw = json.loads((DATA / "studies" / f"{nct_id}.json").read_text())
    return data


def next_version(obj: Raw, post: str = "2026-01-10", submit: str = "2026-01-08") -> Raw:
    """A copy posted as a later CT.gov version (new bookkeeping dates, new versionHolder)."""
    new = copy.deepcopy(obj)
    status = new["protocolSection"]["statusModule"]
    status["lastUpdatePostDateStruct"] = {"date": post, "type": "ACTUAL"}
    status["lastUpdateSubmitDate"] = submit
    status["statusVerifiedDate"] = post[:7]
    new["derivedSection"]["miscInfoModule"]["versionHolder"] = "2026-01-11"
    return new


def derive(old: Raw | None, new: Raw, **kw: Any) -> list[dict[str, Any]]:
    """diff() on parsed records; every event it derives must validate against the schema."""
    before = parse_record(old) if old is not None else None
    events = diff(
        before,
        parse_record(new),
        new_study_window_days=kw.pop("window", WINDOW),
        today=kw.pop("today", TODAY),
        **kw,
    )
    for event in events:
        VALIDATOR.validate(event)
    return events


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["change_kind"] for e in events]


def only(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (event,) = [e for e in events if e["change_kind"] == kind]
    return event


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_real_record_parses_and_round_trips_through_a_snapshot(path: Path) -> None:
    text = path.read_bytes()
    record = parse_record(json.loads(text))
    assert record.nct_id == path.stem
    assert record.url == f"https://clinicaltrials.gov/study/{path.stem}"
    assert all(m.id == normalize_mesh_id(m.id_as_received) for m in record.condition_mesh)
    stored = snapshot_bytes(record)
    assert load_snapshot(stored) == record
    assert load_snapshot(stored).raw == record.raw
    assert len(stored) < len(text) / 2
    assert snapshot_bytes(load_snapshot(stored)) == stored  # canonical: same bytes every time


def test_snapshots_are_a_fifth_of_the_raw_json() -> None:
    raw_total = sum(len(p.read_bytes()) for p in STUDIES)
    stored_total = sum(
        len(snapshot_bytes(parse_record(json.loads(p.read_text())))) for p in STUDIES
    )
    # 18 trimmed records: ~9.9 kB of API JSON each, ~1.9 kB stored.
    assert stored_total / len(STUDIES) < 2_100
    assert stored_total < raw_total / 4


def test_record_fields_carry_what_the_service_uses() -> None:
    unknown = parse_record(raw("NCT03801200"))
    assert (unknown.overall_status, unknown.last_known_status) == (
        "UNKNOWN",
        "ENROLLING_BY_INVITATION",
    )
    suspended = parse_record(raw("NCT05378763"))
    assert suspended.why_stopped
    results = parse_record(raw("NCT02856893"))
    assert results.has_results
    assert results.results_first_post is not None
    assert results.results_first_post.date == "2025-10-31"
    assert results.completion is not None
    assert (results.completion.date, results.completion.type) == ("2027-12", "ESTIMATED")
    assert results.completion.day() == date(2027, 12, 1)
    assert results.acronym == "APPLE"
    assert results.locations[0].lat is not None
    assert {loc.country for loc in results.locations} >= {"France", "Spain"}
    sclc = parse_record(raw("NCT05879978"))
    assert sclc.phases == ("PHASE1", "PHASE2")
    assert sclc.study_first_post.date == "2023-05-30"
    assert "D000055752" in {m.id for m in sclc.condition_mesh}
    assert sclc.version_key == "2023-06-14/2023-06-15"


def test_eligibility_is_read_when_present() -> None:
    obj = raw("NCT05879978")
    obj["protocolSection"]["eligibilityModule"] = {
        "eligibilityCriteria": "Inclusion Criteria:\n\n* DLL3 positive",
        "healthyVolunteers": False,
        "sex": "ALL",
        "minimumAge": "18 Years",
        "stdAges": ["ADULT", "OLDER_ADULT"],
    }
    eligibility = parse_record(obj).eligibility
    assert eligibility is not None
    assert (eligibility.sex, eligibility.minimum_age, eligibility.maximum_age) == (
        "ALL",
        "18 Years",
        None,
    )
    assert eligibility.healthy_volunteers is False
    assert eligibility.std_ages == ("ADULT", "OLDER_ADULT")
    assert parse_record(raw("NCT05879978")).eligibility is None


def test_absent_optional_modules_are_fine() -> None:
    obj = raw("NCT05879978")
    for key in ("conditionsModule", "designModule", "contactsLocationsModule"):
        del obj["protocolSection"][key]
    del obj["derivedSection"]
    del obj["hasResults"]
    record = parse_record(obj)
    assert (record.conditions, record.locations, record.condition_mesh) == ((), (), ())
    assert record.has_results is False
    assert record.version_holder is None


# -- what derives nothing ------------------------------------------------------------------


def test_the_same_record_twice_derives_nothing() -> None:
    obj = raw("NCT05844332")
    assert derive(obj, copy.deepcopy(obj)) == []


def test_bookkeeping_only_derives_nothing_and_keeps_the_fingerprint() -> None:
    old = raw("NCT05879978")
    new = next_version(old)  # versionHolder, lastUpdatePost/Submit, statusVerifiedDate
    derived = new["derivedSection"]
    derived["miscInfoModule"]["modelPredictions"] = {"bmiLimits": {"minBmi": 1.0}}
    browse = derived["conditionBrowseModule"]
    browse["browseLeaves"].reverse()
    del browse["browseBranches"]
    browse["meshes"].reverse()
    browse["ancestors"] = browse["ancestors"][1:] + browse["ancestors"][:1]
    new["derivedSection"]["interventionBrowseModule"] = {"meshes": []}
    assert derive(old, new) == []
    assert material_fingerprint(parse_record(old)) == material_fingerprint(parse_record(new))


def test_only_version_holder_changed() -> None:
    old = raw("NCT06094296")
    new = copy.deepcopy(old)
    new["derivedSection"]["miscInfoModule"]["versionHolder"] = "2026-01-02"
    assert derive(old, new) == []
    assert material_fingerprint(parse_record(old)) == material_fingerprint(parse_record(new))


def test_both_mesh_id_forms_compare_equal() -> None:
    padded = raw("NCT05879978")
    unpadded = copy.deepcopy(padded)
    browse = unpadded["derivedSection"]["conditionBrowseModule"]
    for mesh in browse["meshes"] + browse["ancestors"]:
        mesh["id"] = "D" + mesh["id"][4:]  # D000055752 -> D055752
    assert browse["meshes"][3]["id"] == "D055752"
    a, b = parse_record(padded), parse_record(unpadded)
    assert a.condition_mesh == tuple(
        m.__class__(m.id, m.term, p.id_as_received)
        for m, p in zip(b.condition_mesh, a.condition_mesh, strict=True)
    )
    assert [m.id for m in a.condition_mesh] == [m.id for m in b.condition_mesh]
    assert derive(padded, unpadded) == []
    assert material_fingerprint(a) == material_fingerprint(b)
    # And across the two real format generations: NSCLC is D002289 (2025) and D000002289 (2023).
    nsclc_2025 = parse_record(raw("NCT05701787")).condition_mesh
    nsclc_2023 = parse_record(raw("NCT05826366")).condition_mesh
    assert {m.id for m in nsclc_2025} & {m.id for m in nsclc_2023} == {"D000002289"}


def test_mesh_remapping_alone_is_no_change() -> None:
    # 2023 -> 2025 data: CT.gov dropped this study's condition MeSH without any sponsor edit.
    old = raw("NCT05913115")
    new = next_version(old)
    new["derivedSection"]["conditionBrowseModule"] = {
        "meshes": [{"id": "D013274", "term": "Stomach Neoplasms"}]
    }
    assert derive(old, new) == []


def test_an_older_version_arriving_late_derives_nothing() -> None:
    newer = next_version(raw("NCT05879978"))
    newer["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"
    older = raw("NCT05879978")
    assert is_stale(parse_record(newer), parse_record(older))
    assert derive(newer, older) == []


# -- each kind -------------------------------------------------------------------------------


def test_status_changed_carries_why_stopped() -> None:
    old = raw("NCT05879978")
    new = next_version(old)
    status = new["protocolSection"]["statusModule"]
    status["overallStatus"] = "SUSPENDED"
    status["whyStopped"] = "Sponsor decision"
    (event,) = derive(old, new)
    assert event["change_kind"] == "status_changed"
    assert event["occurred_on"] == "2026-01-10"
    assert event["study"]["overall_status"] == "SUSPENDED"
    assert event["study"]["why_stopped"] == "Sponsor decision"
    assert event["changes"] == [
        {
            "path": "protocolSection.statusModule.overallStatus",
            "op": "replace",
            "old": "RECRUITING",
            "new": "SUSPENDED",
        },
        {"path": "protocolSection.statusModule.whyStopped", "op": "add", "new": "Sponsor decision"},
    ]


def test_a_site_that_completes_opens_or_closes() -> None:
    old = raw("NCT05844332")
    new = next_version(old)
    locations = new["protocolSection"]["contactsLocationsModule"]["locations"]
    locations[0]["status"] = "COMPLETED"
    gone = locations.pop(1)
    locations.append({"facility": "Kobe Hospital", "city": "Kobe", "country": "Japan"})
    locations[-1]["status"] = "NOT_YET_RECRUITING"
    (event,) = derive(old, new)
    assert event["change_kind"] == "recruitment_sites_changed"
    by_op = {c["op"]: c for c in event["changes"]}
    assert len(event["changes"]) == 3
    assert by_op["replace"]["old"]["status"] == "RECRUITING"
    assert by_op["replace"]["new"]["status"] == "COMPLETED"
    assert by_op["replace"]["new"]["facility"] == locations[0]["facility"]
    assert by_op["remove"]["old"]["facility"] == gone["facility"]
    assert by_op["add"]["new"] == {
        "facility": "Kobe Hospital",
        "city": "Kobe",
        "state": None,
        "zip": None,
        "country": "Japan",
        "status": "NOT_YET_RECRUITING",
    }
    assert {c["path"] for c in event["changes"]} == {
        "protocolSection.contactsLocationsModule.locations"
    }
    assert event["study"]["locations_summary"]["count"] == len(locations)


def test_sites_sharing_facility_city_and_country() -> None:
    # AstraZeneca lists several 'Research Site's in one city: one of them starts recruiting.
    old = raw("NCT05826366")
    new = next_version(old)
    locations = new["protocolSection"]["contactsLocationsModule"]["locations"]
    osaka = [
        loc for loc in locations if (loc["facility"], loc["city"]) == ("Research Site", "Osaka")
    ]
    assert len(osaka) > 1
    was = osaka[-1]["status"]
    osaka[-1]["status"] = "RECRUITING"
    locations.reverse()  # order is no change
    (event,) = derive(old, new)
    assert [(c["op"], c["old"]["status"], c["new"]["status"]) for c in event["changes"]] == [
        ("replace", was, "RECRUITING")
    ]


def test_site_details_and_statuses_ct_gov_stops_showing_are_no_change() -> None:
    old = raw("NCT05844332")
    new = next_version(old)
    for loc in new["protocolSection"]["contactsLocationsModule"]["locations"]:
        loc.pop("status")  # CT.gov hides site statuses once a study stops recruiting
        loc["geoPoint"] = {"lat": 35.0, "lon": 139.0}
    assert derive(old, new) == []


def test_dates_changed_lists_old_and_new_dates() -> None:
    old = raw("NCT05879978")
    new = next_version(old)
    status = new["protocolSection"]["statusModule"]
    status["primaryCompletionDateStruct"] = {"date": "2025-03", "type": "ESTIMATED"}
    (event,) = derive(old, new)
    assert event["change_kind"] == "dates_changed"
    assert event["changes"] == [
        {
            "path": "protocolSection.statusModule.primaryCompletionDateStruct",
            "op": "replace",
            "old": {"date": "2024-10-30", "type": "ESTIMATED"},
            "new": {"date": "2025-03", "type": "ESTIMATED"},
        }
    ]


def test_results_posted_matches_the_reference_pipeline_event() -> None:
    example = json.loads((DATA / "events_examples.json").read_text())[1]
    new = raw("NCT02856893")
    old = copy.deepcopy(new)
    old["hasResults"] = False
    status = old["protocolSection"]["statusModule"]
    for key in ("resultsFirstPostDateStruct", "resultsFirstSubmitDate", "resultsFirstSubmitQcDate"):
        del status[key]
    (event,) = derive(old, new)
    assert event["change_kind"] == "results_posted"
    assert event["occurred_on"] == "2025-10-31"
    assert event["changes"] == example["changes"]
    assert event["event_id"] == example["event_id"]  # same change via POST /v1/events: one event
    example["study"].pop("match_keys")
    assert event["study"] == example["study"]


def test_results_posted_with_a_results_section() -> None:
    old = raw("NCT05879978")
    new = next_version(old)
    new["hasResults"] = True
    new["protocolSection"]["statusModule"]["resultsFirstPostDateStruct"] = {
        "date": "2026-01-09",
        "type": "ACTUAL",
    }
    new["resultsSection"] = {"participantFlowModule": {"recruitmentDetails": "x" * 10_000}}
    (event,) = derive(old, new)
    assert (event["change_kind"], event["occurred_on"]) == ("results_posted", "2026-01-09")
    assert [c["path"] for c in event["changes"]] == [
        "hasResults",
        "protocolSection.statusModule.resultsFirstPostDateStruct",
    ]


def test_conditions_changed_names_what_was_added_and_removed() -> None:
    old = raw("NCT05879978")
    new = next_version(old)
    new["protocolSection"]["conditionsModule"]["conditions"] = [
        "Small Cell Lung Carcinoma (SCLC)",
        "Large Cell Neuroendocrine Carcinoma",
    ]
    new["protocolSection"]["conditionsModule"]["keywords"] = ["DLL3"]
    new["derivedSection"]["conditionBrowseModule"]["meshes"].pop()  # Neuroendocrine Tumors
    (event,) = derive(old, new)
    assert event["change_kind"] == "conditions_changed"
    conditions, keywords, meshes = event["changes"]
    assert conditions["added"] == ["Large Cell Neuroendocrine Carcinoma"]
    assert conditions["removed"] == ["Neuroendocrine Neoplasms"]
    assert (keywords["op"], keywords["added"], keywords["removed"]) == ("replace", ["DLL3"], [])
    assert meshes["path"] == "derivedSection.conditionBrowseModule.meshes"
    assert meshes["removed"] == [{"id": "D000018358", "term": "Neuroendocrine Tumors"}]


def test_conditions_reordered_or_recased_is_no_change() -> None:
    old = raw("NCT05879978")
    new = next_version(old)
    conditions = new["protocolSection"]["conditionsModule"]["conditions"]
    conditions[:] = [c.upper() for c in reversed(conditions)]
    assert derive(old, new) == []


def test_eligibility_change_is_study_updated_under_eligibility_module() -> None:
    old = raw("NCT05879978")
    old["protocolSection"]["eligibilityModule"] = {"sex": "ALL", "minimumAge": "18 Years"}
    new = next_version(old)
    new["protocolSection"]["eligibilityModule"]["minimumAge"] = "16 Years"
    new["protocolSection"]["eligibilityModule"]["eligibilityCriteria"] = "y" * 5_000
    (event,) = derive(old, new)
    assert event["change_kind"] == "study_updated"
    assert event["changes"] == [
        {"path": "protocolSection.eligibilityModule.eligibilityCriteria", "op": "add"},
        {
            "path": "protocolSection.eligibilityModule.minimumAge",
            "op": "replace",
            "old": "18 Years",
            "new": "16 Years",
        },
    ]


def test_other_material_changes_are_study_updated() -> None:
    old = raw("NCT05879978")
    new = next_version(old)
    new["protocolSection"]["designModule"]["enrollmentInfo"]["count"] = 60
    new["protocolSection"]["identificationModule"]["acronym"] = "DAREON-8"
    (event,) = derive(old, new)
    assert event["change_kind"] == "study_updated"
    assert [(c["path"], c["op"]) for c in event["changes"]] == [
        ("protocolSection.designModule.enrollmentInfo.count", "replace"),
        ("protocolSection.identificationModule.acronym", "add"),
    ]
    assert event["study"]["acronym"] == "DAREON-8"


def test_one_version_derives_one_event_per_kind() -> None:
    old = raw("NCT05844332")
    new = next_version(old)
    status = new["protocolSection"]["statusModule"]
    status["overallStatus"] = "ACTIVE_NOT_RECRUITING"
    status["completionDateStruct"] = {"date": "2028-01-31", "type": "ESTIMATED"}
    for loc in new["protocolSection"]["contactsLocationsModule"]["locations"]:
        loc["status"] = "ACTIVE_NOT_RECRUITING"
    new["protocolSection"]["descriptionModule"]["briefSummary"] += " Updated."
    events = derive(old, new)
    assert kinds(events) == [
        "status_changed",
        "dates_changed",
        "recruitment_sites_changed",
        "study_updated",
    ]
    assert len({e["event_id"] for e in events}) == 4
    sites = only(events, "recruitment_sites_changed")
    assert len(sites["changes"]) == 25
    assert all(e["occurred_on"] == "2026-01-10" for e in events)
    assert kinds(events) == [k for k in KINDS if k in kinds(events)]


# -- first sight -----------------------------------------------------------------------------


def test_new_study_matches_the_reference_pipeline_event() -> None:
    example = json.loads((DATA / "events_examples.json").read_text())[0]
    (event,) = derive(None, raw("NCT05879978"), today=date(2023, 6, 29), window=60)
    assert event["change_kind"] == "new_study"
    assert event["occurred_on"] == "2023-05-30"
    assert event["changes"] == []
    assert event["event_id"] == example["event_id"]
    example["study"].pop("match_keys")
    assert event["study"] == example["study"]


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2023, 5, 30), ["new_study"]),
        (date(2023, 6, 29), ["new_study"]),  # 30 days after first posting: still inside
        (date(2023, 6, 30), []),
        (date(2026, 1, 15), []),  # the first full import of old records mails nobody
    ],
)
def test_first_sight_inside_and_outside_the_window(today: date, expected: list[str]) -> None:
    assert kinds(derive(None, raw("NCT05879978"), today=today, window=30)) == expected


def test_first_sight_of_every_real_record_a_year_on_derives_nothing() -> None:
    for path in STUDIES:
        assert derive(None, json.loads(path.read_text()), today=date(2027, 1, 1)) == []


# -- event ids -------------------------------------------------------------------------------


def test_event_ids_are_deterministic() -> None:
    old = raw("NCT05838768")
    new = next_version(old)
    new["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"
    first = derive(old, new)
    # Another machine: from stored snapshots, another day, another detection time.
    again = diff(
        load_snapshot(snapshot_bytes(parse_record(copy.deepcopy(old)))),
        load_snapshot(snapshot_bytes(parse_record(json.loads(json.dumps(new))))),
        new_study_window_days=7,
        today=date(2026, 3, 1),
        detected_at=datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
    )
    assert [e["event_id"] for e in again] == [e["event_id"] for e in first]
    (event,) = first
    assert event["event_id"] == event_id_for(
        "NCT05838768", "status_changed", "2026-01-08/2026-01-10"
    )
    assert again[0]["detected_at"] == "2026-03-01T12:30:00Z"
    # Diffed against an older base, the same version's status change is the same event.
    base = next_version(old, post="2025-06-01", submit="2025-05-30")
    base["protocolSection"]["descriptionModule"]["briefSummary"] = "older text"
    assert only(derive(base, new), "status_changed")["event_id"] == event["event_id"]


def test_a_status_flipping_back_gets_a_new_id_each_time() -> None:
    v1 = raw("NCT05838768")
    v2 = next_version(v1, post="2026-01-10", submit="2026-01-08")
    v2["protocolSection"]["statusModule"]["overallStatus"] = "SUSPENDED"
    v3 = next_version(v2, post="2026-02-10", submit="2026-02-08")
    v3["protocolSection"]["statusModule"]["overallStatus"] = "RECRUITING"
    v4 = next_version(v3, post="2026-03-10", submit="2026-03-08")
    v4["protocolSection"]["statusModule"]["overallStatus"] = "SUSPENDED"
    ids = [derive(a, b)[0]["event_id"] for a, b in ((v1, v2), (v2, v3), (v3, v4))]
    assert len(set(ids)) == 3


# -- invalid records ---------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[Raw], Any]:
    def mutate(obj: Raw) -> Any:
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return obj

    return mutate


_DELETE = object()
ARABIC_8, WIDE_8 = "\u0668", "\uff18"  # digits to str.isdigit() and to \d, but not ASCII
IDENT = "protocolSection.identificationModule"
STATUS = "protocolSection.statusModule"
LOC0 = "protocolSection.contactsLocationsModule.locations.0"
MESH0 = "derivedSection.conditionBrowseModule.meshes.0"


def _deep(obj: Raw) -> Raw:
    node: Any = obj["protocolSection"]["descriptionModule"]
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    return obj


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: [o], "study: must be an object, not a list"),
        (_set("protocolSection", _DELETE), "protocolSection: missing"),
        (_set(f"{IDENT}.nctId", _DELETE), f"{IDENT}.nctId: missing"),
        (_set(f"{IDENT}.nctId", 5879978), f"{IDENT}.nctId: must be a string, not a number"),
        (
            _set(f"{IDENT}.nctId", "NCT0587997"),
            "'NCT0587997' is not NCT followed by 8 ASCII digits",
        ),
        (_set(f"{IDENT}.nctId", "nct05879978"), "is not NCT followed by 8 ASCII digits"),
        (_set(f"{IDENT}.nctId", f"NCT0587997{ARABIC_8}"), f"'NCT0587997{ARABIC_8}' is not NCT"),
        (
            _set(f"{IDENT}.nctId", f"NCT0587997{WIDE_8}"),
            f"'NCT0587997{WIDE_8}' is not NCT followed",
        ),
        (_set(f"{IDENT}.nctId", "NCT05879978\n"), "is not NCT followed by 8 ASCII digits"),
        (_set(f"{IDENT}.nctIdAliases", ["NCT1"]), f"{IDENT}.nctIdAliases[0]: 'NCT1' is not NCT"),
        (_set(f"{IDENT}.briefTitle", _DELETE), f"{IDENT}.briefTitle: missing"),
        (_set(f"{IDENT}.briefTitle", "  "), f"{IDENT}.briefTitle: must not be empty"),
        (_set(f"{IDENT}.briefTitle", "t" * 2_001), "briefTitle: 2,001 characters, at most 2,000"),
        (_set(f"{IDENT}.briefTitle", "A\x00B"), f"study.{IDENT}.briefTitle: text must not contain"),
        (_set("protocolSection.statusModule", "RECRUITING"), f"{STATUS}: must be an object, not a"),
        (_set(f"{STATUS}.overallStatus", "recruiting"), "'recruiting' is not an enum value"),
        (_set(f"{STATUS}.overallStatus", None), f"{STATUS}.overallStatus: missing"),
        (_set(f"{STATUS}.lastUpdatePostDateStruct", _DELETE), "lastUpdatePostDateStruct: missing"),
        (_set(f"{STATUS}.studyFirstPostDateStruct.date", "2023-05"), "is not a date (yyyy-MM-dd)"),
        (
            _set(f"{STATUS}.startDateStruct.date", "2023/05/31"),
            "startDateStruct.date: '2023/05/31'",
        ),
        (_set(f"{STATUS}.startDateStruct.date", "2023-02-30"), "is not a calendar date"),
        (_set(f"{STATUS}.startDateStruct.type", "GUESSED"), "is not ACTUAL or ESTIMATED"),
        (
            _set(f"{STATUS}.lastUpdateSubmitDate", f"202{ARABIC_8}-06-14"),
            "lastUpdateSubmitDate: '202",
        ),
        (_set("hasResults", "yes"), "hasResults: must be true or false, not a string"),
        (_set("protocolSection.conditionsModule.conditions", "SCLC"), "conditions: must be a list"),
        (_set("protocolSection.conditionsModule.conditions.0", 1), "conditions[0]: must be a str"),
        (_set("protocolSection.conditionsModule.keywords", ["k"] * 5_001), "5001 items, at most"),
        (_set(LOC0, "Tokyo"), "locations[0]: must be an object, not a string"),
        (_set(f"{LOC0}.geoPoint", {"lat": 135.0, "lon": 35.0}), "geoPoint.lat: 135.0 is outside"),
        (_set(f"{LOC0}.geoPoint", {"lat": True}), "geoPoint.lat: must be a number, not a boolean"),
        (_set(f"{MESH0}.id", "M10862"), "meshes[0].id: 'M10862' is not a MeSH id"),
        (_set(f"{MESH0}.id", f"D{WIDE_8}55752"), "is not a MeSH id"),
        (_set(f"{MESH0}.term", _DELETE), "meshes[0].term: missing"),
        (_set("derivedSection.x", float("nan")), "study.derivedSection.x: numbers must be finite"),
        (_set("derivedSection.x", {1: "a"}), "study.derivedSection.x: keys must be strings"),
        (_set("derivedSection.x", b"bytes"), "study.derivedSection.x: bytes is not a JSON value"),
        (_set("derivedSection.x", "z" * 16_000_001), "study: larger than 16,000,000 characters"),
        (_deep, "nested deeper than 64 levels"),
    ],
)
def test_invalid_records_are_rejected_with_a_clear_message(
    mutate: Callable[[Raw], Any], message: str
) -> None:
    obj = mutate(raw("NCT05879978"))
    with pytest.raises(RecordError) as caught:
        parse_record(obj)
    assert message in str(caught.value)


def test_too_many_locations() -> None:
    obj = raw("NCT05879978")
    site = obj["protocolSection"]["contactsLocationsModule"]["locations"][0]
    obj["protocolSection"]["contactsLocationsModule"]["locations"] = [site] * (MAX_LOCATIONS + 1)
    with pytest.raises(RecordError, match=r"locations: 20001 items, at most 20000"):
        parse_record(obj)


@pytest.mark.parametrize("data", [b"", b"not zlib", zlib.compress(b"{not json"), b"x\x9c"])
def test_a_corrupt_snapshot_is_a_record_error(data: bytes) -> None:
    with pytest.raises(RecordError, match="snapshot"):
        load_snapshot(data)


def test_diffing_two_different_studies_is_refused() -> None:
    a: StudyRecord = parse_record(raw("NCT05879978"))
    with pytest.raises(ValueError, match="cannot diff"):
        diff(a, parse_record(raw("NCT05844332")), new_study_window_days=1, today=TODAY)
