"""Change summaries and match reasons from real ClinicalTrials.gov records and example events."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock; tests only
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.mail.labels import STATUS_LABELS, field_label, status_label
from notifier.mail.summaries import ChangeLine, match_reason, summarize
from notifier.ops.sample_events import (
    build_event,
    earlier_version,
    load_records,
    sample_events,
    study_from_record,
    with_fewer_sites,
)
from tests.conftest import DATA

RECORDS = load_records()
EXAMPLES = {e["change_kind"]: e for e in json.loads((DATA / "events_examples.json").read_text())}
SCHEMA = json.loads((DATA / "trial_change_event.schema.json").read_text())
STATUS = "protocolSection.statusModule.overallStatus"


def event(kind: str, *changes: dict[str, Any], nct: str = "NCT05879978") -> dict[str, Any]:
    return build_event(RECORDS[nct], kind, changes=list(changes))


def test_every_ctgov_status_has_a_human_label() -> None:
    codes = SCHEMA["$defs"]["status"]["enum"]
    assert set(codes) == set(STATUS_LABELS)
    for code in codes:
        assert "_" not in status_label(code)
    assert status_label("ACTIVE_NOT_RECRUITING") == "Active, not recruiting"
    assert status_label("SOMETHING_NEW") == "Something new"  # a status CT.gov adds later


def test_events_built_from_records_follow_the_reference_schema() -> None:
    for ev in sample_events(RECORDS).values():
        jsonschema.validate(ev, SCHEMA)
    for example in EXAMPLES.values():
        if example["nct_id"] in RECORDS:
            assert study_from_record(RECORDS[example["nct_id"]]) == example["study"]


def test_example_events() -> None:
    status = summarize(EXAMPLES["status_changed"])
    assert status == summarize(EXAMPLES["status_changed"])  # pure
    assert status.material
    assert status.headline == "Recruiting → Active, not recruiting"
    assert status.lines == [ChangeLine("Status", "Recruiting", "Active, not recruiting")]

    results = summarize(EXAMPLES["results_posted"])
    assert results.material
    assert results.headline == "Results posted"
    assert results.lines == [ChangeLine("Results", None, "Posted on 31 October 2025")]

    new = summarize(EXAMPLES["new_study"])
    assert new.material
    assert new.headline == "New study"
    facts = {line.label: line.new for line in new.lines}
    assert facts["Status"] == "Recruiting"
    assert facts["Phase"] == "Phase 1 / Phase 2"
    assert facts["Sponsor"] == "Boehringer Ingelheim"
    assert facts["Sites"] == "1 site in Japan"


@pytest.mark.parametrize("nct", sorted(RECORDS))
def test_verification_date_only_change_is_not_material(nct: str) -> None:
    record = RECORDS[nct]
    previous = earlier_version(
        record,
        statusVerifiedDate="2020-01",
        lastUpdateSubmitDate="2020-01-02",
        lastUpdatePostDateStruct={"date": "2020-01-05", "type": "ACTUAL"},
    )
    previous["derivedSection"]["miscInfoModule"]["versionHolder"] = "2020-01-06"
    ev = build_event(record, "study_updated", previous=previous)
    assert {c["path"].rsplit(".", 1)[-1] for c in ev["changes"]} == {
        "statusVerifiedDate",
        "lastUpdateSubmitDate",
        "lastUpdatePostDateStruct",
        "versionHolder",
    }
    summary = summarize(ev)
    assert not summary.material
    assert summary.lines == []


def test_version_holder_is_never_a_change_even_under_a_material_kind() -> None:
    holder = {
        "path": "derivedSection.miscInfoModule.versionHolder",
        "op": "replace",
        "old": "2023-06-28",
        "new": "2023-06-29",
    }
    verified = {
        "path": "protocolSection.statusModule.statusVerifiedDateStruct",
        "op": "replace",
        "old": {"date": "2023-05"},
        "new": {"date": "2023-06"},
    }
    for kind in ("status_changed", "dates_changed", "recruitment_sites_changed"):
        assert not summarize(event(kind, holder, verified)).material
    # Kinds that are news by themselves stay material.
    assert summarize(event("results_posted", holder)).material
    unavailable = summarize(event("study_unavailable", holder))
    assert unavailable.material
    assert unavailable.headline == "No longer listed on ClinicalTrials.gov"


@pytest.mark.parametrize(
    "nct",
    sorted(
        n
        for n, r in RECORDS.items()
        if r["protocolSection"]["statusModule"]["overallStatus"] != "RECRUITING"
    ),
)
def test_status_change_from_real_records_names_the_new_status(nct: str) -> None:
    record = RECORDS[nct]
    new_status = record["protocolSection"]["statusModule"]["overallStatus"]
    previous = earlier_version(
        record, overallStatus="RECRUITING", whyStopped=None, statusVerifiedDate="2019-01"
    )
    summary = summarize(build_event(record, "status_changed", previous=previous))
    assert summary.material
    assert summary.headline == f"Recruiting → {STATUS_LABELS[new_status]}"
    # Material first; the verification date is bookkeeping and not shown at all.
    assert summary.lines[0] == ChangeLine("Status", "Recruiting", STATUS_LABELS[new_status])
    assert all("verif" not in line.label.lower() for line in summary.lines)
    why = record["protocolSection"]["statusModule"].get("whyStopped")
    if why:
        assert ChangeLine("Why it stopped", None, why) in summary.lines


def test_material_changes_come_first_whatever_the_input_order() -> None:
    summary = summarize(
        event(
            "study_updated",
            {
                "path": "protocolSection.statusModule.statusVerifiedDate",
                "old": "2023-05",
                "new": "2023-06",
            },
            {
                "path": "protocolSection.descriptionModule.briefSummary",
                "old": "Old text",
                "new": "New text",
            },
            {
                "path": "protocolSection.statusModule.completionDateStruct",
                "op": "replace",
                "old": {"date": "2024-10-30", "type": "ESTIMATED"},
                "new": {"date": "2025-03", "type": "ESTIMATED"},
            },
            {"path": STATUS, "op": "replace", "old": "RECRUITING", "new": "COMPLETED"},
        )
    )
    assert summary.headline == "Recruiting → Completed"
    assert [line.label for line in summary.lines] == ["Status", "Completion date", "Summary"]
    assert summary.lines[1] == ChangeLine(
        "Completion date", "30 October 2024 (estimated)", "March 2025 (estimated)"
    )


def test_new_sites_are_counted_by_country_from_a_real_record() -> None:
    record = RECORDS["NCT05826366"]
    previous = with_fewer_sites(record, "Japan", 3)
    summary = summarize(build_event(record, "recruitment_sites_changed", previous=previous))
    assert summary.material
    assert summary.headline == "3 new sites in Japan"
    assert summary.lines[0].label == "New sites"
    assert str(summary.lines[0].new).startswith("3 in Japan (")

    # The other way round: sites that disappeared.
    gone = summarize(build_event(previous, "recruitment_sites_changed", previous=record))
    assert gone.headline == "3 sites no longer listed"
    assert gone.lines == [ChangeLine("Sites no longer listed", gone.lines[0].old, None)]


def test_sites_in_several_countries_and_site_status_changes() -> None:
    path = "protocolSection.contactsLocationsModule.locations"
    tokyo = {"facility": "A", "city": "Tokyo", "country": "Japan", "status": "RECRUITING"}
    paris = {"facility": "B", "city": "Paris", "country": "France"}
    berlin = {"facility": "C", "city": "Berlin", "country": "Germany"}
    closing = {"facility": "D", "city": "Lyon", "country": "France", "status": "RECRUITING"}
    closed = dict(closing, status="COMPLETED")
    two = summarize(event("recruitment_sites_changed", {"path": path, "added": [tokyo, paris]}))
    assert two.headline == "2 new sites in France and Japan"
    three = summarize(
        event("recruitment_sites_changed", {"path": path, "added": [tokyo, paris, berlin]})
    )
    assert three.headline == "3 new sites in 3 countries"
    moved = summarize(
        event("recruitment_sites_changed", {"path": path, "added": [closed], "removed": [closing]})
    )
    assert moved.headline == "Site status changed at 1 site"
    assert moved.lines == [ChangeLine("Site D, Lyon, France", "Recruiting", "Completed")]
    # Only the map position moved: nothing a participant needs to hear about.
    moved_pin = dict(paris, geoPoint={"lat": 1.0, "lon": 2.0})
    assert not summarize(
        event("recruitment_sites_changed", {"path": path, "added": [moved_pin], "removed": [paris]})
    ).material


def test_conditions_enrollment_and_unknown_fields_get_readable_labels() -> None:
    summary = summarize(
        event(
            "conditions_changed",
            {
                "path": "protocolSection.conditionsModule.conditions",
                "added": ["NSCLC"],
                "removed": ["Lung Cancer"],
            },
            {
                "path": "protocolSection.designModule.enrollmentInfo.count",
                "op": "replace",
                "old": 30,
                "new": 156,
            },
            {"path": "protocolSection.newModule.someBrandNewFieldStruct", "op": "add", "new": "x"},
        )
    )
    assert summary.headline == "Conditions added: NSCLC"
    assert summary.lines == [
        ChangeLine("Conditions added", None, "NSCLC"),
        ChangeLine("Conditions removed", "Lung Cancer", None),
        ChangeLine("Enrollment", "30 participants", "156 participants"),
        ChangeLine("Some brand new field", None, "x"),
    ]
    assert (
        field_label("protocolSection.contactsLocationsModule.locations[3].status") == "Study sites"
    )
    assert field_label("protocolSection.designModule.designInfo.maskingInfo") == "Study design"
    assert field_label("protocolSection.designModule.bioSpec.retentionStruct") == "Retention"


def test_an_event_without_change_details_trusts_its_kind() -> None:
    summary = summarize(event("status_changed", nct="NCT02856893"))
    assert summary.material
    assert summary.headline == "Now Active, not recruiting"


def test_long_values_are_shortened_and_stay_on_one_line() -> None:
    why = "Sponsor decision.\n" * 100
    summary = summarize(
        event("status_changed", {"path": "protocolSection.statusModule.whyStopped", "new": why})
    )
    line = summary.lines[0]
    assert line.new is not None
    assert len(line.new) <= 300
    assert "\n" not in line.new
    assert len(summary.headline) <= 120


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(SCHEMA["properties"]["change_kind"]["enum"]),
    changes=st.lists(
        st.fixed_dictionaries(
            {
                "path": st.sampled_from(
                    [
                        STATUS,
                        "hasResults",
                        "protocolSection.contactsLocationsModule.locations",
                        "protocolSection.conditionsModule.conditions",
                        "protocolSection.statusModule.startDateStruct",
                        "x.y[2].z",
                        "",
                    ]
                )
                | st.text(max_size=40)
            },
            optional={
                "op": st.text(max_size=8),
                "old": json_values,
                "new": json_values,
                "added": json_values,
                "removed": json_values,
            },
        ),
        max_size=5,
    ),
)
def test_summaries_never_fail_on_odd_changes(kind: str, changes: list[dict[str, Any]]) -> None:
    ev = copy.deepcopy(EXAMPLES["new_study"])
    ev["change_kind"], ev["changes"] = kind, changes
    summary = summarize(ev)
    assert summary.headline
    assert "\n" not in summary.headline
    if kind in ("new_study", "results_posted", "study_unavailable"):
        assert summary.material


# -- why it matched ---------------------------------------------------------------------------


def test_study_subscription_reason() -> None:
    new = EXAMPLES["new_study"]
    assert match_reason("study", "NCT05879978", new) == "You follow NCT05879978."
    assert match_reason("study", "NCT00000001", new) == (
        "You follow NCT00000001, now listed as NCT05879978."
    )


def test_condition_reasons_name_what_matched() -> None:
    new = EXAMPLES["new_study"]  # 'Small Cell Lung Carcinoma (SCLC)', 'Neuroendocrine Neoplasms'
    assert match_reason("condition", "Neuroendocrine Tumors", new) == (
        "You follow “Neuroendocrine Tumors”: this study is about neuroendocrine tumors"
        " (it lists “Neuroendocrine Neoplasms”)."
    )
    assert match_reason("condition", "sclc", new) == (
        "You follow “sclc”: this study is about small cell lung cancer"
        " (it lists “Small Cell Lung Carcinoma”)."
    )
    # A broader term: what the study is about, then "a kind of" the subscriber's own term.
    assert match_reason("condition", "lung cancer", new) == (
        "You follow “lung cancer”: this study is about small cell lung cancer"
        " (it lists “Small Cell Lung Carcinoma”), a kind of lung cancer."
    )
    # The subscription's MeSH id matches in either id form; the reason names their words.
    assert match_reason("condition", "Oat cell carcinoma", new, mesh_id="D000055752") == (
        "You follow “Oat cell carcinoma”: this study is about small cell lung cancer"
        " (it lists “Small Cell Lung Carcinoma”)."
    )
    assert match_reason("condition", "Diabetes", new) == "You follow “Diabetes”."


def test_condition_reasons_never_name_mesh_the_study_does_not_support() -> None:
    eye = build_event(RECORDS["NCT05850520"], "new_study")  # indexed as Neoplasm Metastasis
    assert match_reason("condition", "cancer", eye) == "You follow “cancer”."
    assert "macular edema" in match_reason("condition", "macular oedema", eye)


def test_condition_reason_without_mesh_uses_the_text() -> None:
    apple = build_event(RECORDS["NCT02856893"], "new_study")  # NSCLC, no MeSH mapping at all
    assert match_reason("condition", "nsclc", apple) == (
        "You follow “nsclc”: this study is about non-small cell lung cancer (it lists “NSCLC”)."
    )
    assert match_reason("condition", "EGFR lung cancer", apple) == (
        "You follow “EGFR lung cancer”: this study is about non-small cell lung cancer"
        " (it lists “NSCLC”), a kind of lung cancer, and it mentions “EGFR”."
    )
    assert match_reason("condition", "liquid biopsy", apple) == "You follow “liquid biopsy”."
