"""Trial-change events built from real ClinicalTrials.gov records, for previews and tests."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from notifier.core.normalize import normalize_mesh_id

# The repository's copy of real CT.gov API v2 records (tests/data/studies/*.json).
STUDIES_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "studies"


class NoRecords(Exception):
    """The records folder is missing or empty; the message says where it looked."""


def load_records(folder: Path = STUDIES_DIR) -> dict[str, dict[str, Any]]:
    """NCT id -> CT.gov study record, read from *.json files in folder."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("NCT*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        records[record["protocolSection"]["identificationModule"]["nctId"]] = record
    if not records:
        raise NoRecords(f"no ClinicalTrials.gov records (NCT*.json) found in {folder}")
    return records


def _mesh(items: object) -> list[dict[str, str]]:
    out = []
    for item in items if isinstance(items, list) else []:
        mesh_id = normalize_mesh_id(str(item.get("id", "")))
        if mesh_id and item.get("term"):
            out.append({"id": mesh_id, "id_as_received": item["id"], "term": item["term"]})
    return out


def _date(module: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = module.get(name)
    return dict(value) if isinstance(value, dict) else None


def study_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The event's `study` section, as the sync pipeline derives it from a CT.gov record."""
    ps = record["protocolSection"]
    ident, status = ps["identificationModule"], ps.get("statusModule", {})
    conditions_module = ps.get("conditionsModule", {})
    browse = record.get("derivedSection", {}).get("conditionBrowseModule", {})
    meshes, ancestors = _mesh(browse.get("meshes")), _mesh(browse.get("ancestors"))
    locations = ps.get("contactsLocationsModule", {}).get("locations", [])
    conditions = list(conditions_module.get("conditions", []))
    # Without any MeSH mapping the pipeline keys the study by its own words.
    unmapped = [] if meshes else conditions + list(conditions_module.get("keywords", []))
    return {
        "url": f"https://clinicaltrials.gov/study/{ident['nctId']}",
        "brief_title": ident.get("briefTitle", ident["nctId"]),
        "official_title": ident.get("officialTitle"),
        "acronym": ident.get("acronym"),
        "overall_status": status.get("overallStatus", "UNKNOWN"),
        "last_known_status": status.get("lastKnownStatus"),
        "why_stopped": status.get("whyStopped"),
        "study_type": ps.get("designModule", {}).get("studyType"),
        "phases": list(ps.get("designModule", {}).get("phases", [])),
        "lead_sponsor": ps.get("sponsorCollaboratorsModule", {}).get("leadSponsor", {}).get("name"),
        "has_results": bool(record.get("hasResults")),
        "dates": {
            "study_first_post": _date(status, "studyFirstPostDateStruct"),
            "last_update_post": _date(status, "lastUpdatePostDateStruct"),
            "results_first_post": _date(status, "resultsFirstPostDateStruct"),
            "start": _date(status, "startDateStruct"),
            "primary_completion": _date(status, "primaryCompletionDateStruct"),
            "completion": _date(status, "completionDateStruct"),
        },
        "conditions": conditions,
        "keywords": list(conditions_module.get("keywords", [])),
        "interventions": [
            {"type": i.get("type"), "name": i["name"]}
            for i in ps.get("armsInterventionsModule", {}).get("interventions", [])
            if i.get("name")
        ],
        "condition_mesh": meshes,
        "condition_mesh_ancestors": ancestors,
        "match_keys": sorted(
            {f"mesh:{m['id']}" for m in meshes + ancestors}
            | {f"text:{c.strip().lower()}" for c in unmapped}
        ),
        "locations_summary": {
            "count": len(locations),
            "countries": sorted({loc["country"] for loc in locations if loc.get("country")}),
            "recruiting_count": sum(1 for loc in locations if loc.get("status") == "RECRUITING"),
        },
    }


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Field path -> value, one level below each module (how the pipeline compares versions)."""
    fields: dict[str, Any] = {"hasResults": record.get("hasResults", False)}
    for section in ("protocolSection", "derivedSection", "resultsSection"):
        for module, content in (record.get(section) or {}).items():
            if not isinstance(content, dict):
                continue
            for name, value in content.items():
                fields[f"{section}.{module}.{name}"] = value
    return fields


def _canonical(item: Any) -> str:
    return json.dumps(item, sort_keys=True)


def diff_records(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """`changes` between two versions of a record; lists compare as sets (CT.gov reorders them)."""
    before, after = _flatten(old), _flatten(new)
    changes: list[dict[str, Any]] = []
    for path in sorted(before.keys() | after.keys()):
        was, now = before.get(path), after.get(path)
        if was == now:
            continue
        if isinstance(was, list) and isinstance(now, list):
            was_keys = {_canonical(i): i for i in was}
            now_keys = {_canonical(i): i for i in now}
            added = [i for k, i in now_keys.items() if k not in was_keys]
            removed = [i for k, i in was_keys.items() if k not in now_keys]
            if added or removed:
                changes.append({"path": path, "op": "replace", "added": added, "removed": removed})
        elif was is None:
            changes.append({"path": path, "op": "add", "new": now})
        elif now is None:
            changes.append({"path": path, "op": "remove", "old": was})
        else:
            changes.append({"path": path, "op": "replace", "old": was, "new": now})
    return changes


def build_event(
    record: dict[str, Any],
    change_kind: str,
    *,
    previous: dict[str, Any] | None = None,
    changes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One event for record; changes come from `previous` (a former version) unless given."""
    ps = record["protocolSection"]
    nct_id = ps["identificationModule"]["nctId"]
    status = ps.get("statusModule", {})
    posted = (status.get("lastUpdatePostDateStruct") or {}).get("date", "2024-01-01")
    version_key = f"{status.get('lastUpdateSubmitDate', posted)}/{posted}"
    if changes is None:
        changes = diff_records(previous, record) if previous is not None else []
    return {
        "schema_version": "1",
        "event_id": hashlib.sha256(f"{nct_id}|{version_key}|{change_kind}".encode()).hexdigest(),
        "nct_id": nct_id,
        "change_kind": change_kind,
        "occurred_on": posted,
        "submitted_on": status.get("lastUpdateSubmitDate"),
        "detected_at": f"{posted}T12:00:00Z",
        "source": {"system": "clinicaltrials.gov", "version_key": version_key},
        "study": study_from_record(record),
        "changes": changes,
    }


def earlier_version(record: dict[str, Any], **status_fields: Any) -> dict[str, Any]:
    """A copy of record as it stood before: statusModule fields replaced (None removes one)."""
    old = copy.deepcopy(record)
    module = old["protocolSection"].setdefault("statusModule", {})
    for name, value in status_fields.items():
        if value is None:
            module.pop(name, None)
        else:
            module[name] = value
    return old


def with_fewer_sites(record: dict[str, Any], country: str, drop: int) -> dict[str, Any]:
    """A copy of record from before its last `drop` sites in `country` were added."""
    old = copy.deepcopy(record)
    locations = old["protocolSection"]["contactsLocationsModule"]["locations"]
    doomed = [i for i, loc in enumerate(locations) if loc.get("country") == country][-drop:]
    for index in reversed(doomed):
        del locations[index]
    return old


def sample_events(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One event per mail worth looking at, named, built from whichever records are present."""
    events: dict[str, dict[str, Any]] = {}
    by_status: dict[str, dict[str, Any]] = {}
    for record in records.values():
        by_status.setdefault(record["protocolSection"]["statusModule"]["overallStatus"], record)
    if active := by_status.get("ACTIVE_NOT_RECRUITING"):
        events["status_changed"] = build_event(
            active,
            "status_changed",
            previous=earlier_version(active, overallStatus="RECRUITING"),
        )
    if stopped := by_status.get("SUSPENDED") or by_status.get("TERMINATED"):
        events["status_stopped"] = build_event(
            stopped,
            "status_changed",
            previous=earlier_version(stopped, overallStatus="RECRUITING", whyStopped=None),
        )
    with_results = [r for r in records.values() if r.get("hasResults")]
    for record in with_results[:1]:
        old = earlier_version(record, resultsFirstPostDateStruct=None)
        old["hasResults"] = False
        events["results_posted"] = build_event(record, "results_posted", previous=old)
    many_sites = max(
        records.values(),
        key=lambda r: len(
            r["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])
        ),
    )
    locations = (
        many_sites["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])
    )
    if len(locations) > 3 and locations[-1].get("country"):
        previous = with_fewer_sites(many_sites, locations[-1]["country"], 3)
        events["sites_added"] = build_event(
            many_sites, "recruitment_sites_changed", previous=previous
        )
    newest = max(records.values(), key=lambda r: len(_mesh_of(r)))
    events["new_study"] = build_event(newest, "new_study")
    return events


def _mesh_of(record: dict[str, Any]) -> list[Any]:
    browse = record.get("derivedSection", {}).get("conditionBrowseModule", {})
    meshes: list[Any] = browse.get("meshes", [])
    return meshes
