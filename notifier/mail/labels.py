"""Human words for ClinicalTrials.gov codes, field paths and values, as shown in mail."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

STATUS_LABELS = {
    "ACTIVE_NOT_RECRUITING": "Active, not recruiting",
    "COMPLETED": "Completed",
    "ENROLLING_BY_INVITATION": "Enrolling by invitation",
    "NOT_YET_RECRUITING": "Not yet recruiting",
    "RECRUITING": "Recruiting",
    "SUSPENDED": "Suspended",
    "TERMINATED": "Terminated",
    "WITHDRAWN": "Withdrawn",
    "AVAILABLE": "Available",
    "NO_LONGER_AVAILABLE": "No longer available",
    "TEMPORARILY_NOT_AVAILABLE": "Temporarily not available",
    "APPROVED_FOR_MARKETING": "Approved for marketing",
    "WITHHELD": "Withheld",
    "UNKNOWN": "Unknown status",
}

# What each status means for a person, in ClinicalTrials.gov's own sense, as plain words.
STATUS_MEANINGS = {
    "RECRUITING": "the study is looking for participants",
    "NOT_YET_RECRUITING": "the study has not started taking participants yet",
    "ACTIVE_NOT_RECRUITING": "the study has all its participants and no longer takes new ones",
    "ENROLLING_BY_INVITATION": (
        "the study only takes people it invites from a group chosen in advance"
    ),
    "COMPLETED": "the study has ended as planned; participants are no longer seen or treated",
    "SUSPENDED": "the study has stopped for now and may start again",
    "TERMINATED": "the study stopped early and will not start again",
    "WITHDRAWN": "the study stopped before anyone took part",
    "AVAILABLE": "the treatment can be had outside a clinical trial (expanded access)",
    "NO_LONGER_AVAILABLE": "the treatment can no longer be had outside a clinical trial",
    "TEMPORARILY_NOT_AVAILABLE": "the treatment cannot be had outside a clinical trial for now",
    "APPROVED_FOR_MARKETING": "the treatment has been approved for sale to the public",
    "WITHHELD": "the details of access to the treatment are not public",
    "UNKNOWN": "the study has not confirmed its status for over two years",
}

PHASE_LABELS = {
    "NA": "Not applicable",
    "EARLY_PHASE1": "Early phase 1",
    "PHASE1": "Phase 1",
    "PHASE2": "Phase 2",
    "PHASE3": "Phase 3",
    "PHASE4": "Phase 4",
}

# Last meaningful path segment -> label. Paths are CT.gov API v2 JSON paths.
FIELD_LABELS = {
    "overallStatus": "Status",
    "lastKnownStatus": "Last known status",
    "whyStopped": "Why it stopped",
    "hasResults": "Results",
    "resultsFirstPostDateStruct": "Results first posted",
    "resultsSection": "Results",
    "startDateStruct": "Start date",
    "primaryCompletionDateStruct": "Primary completion date",
    "completionDateStruct": "Completion date",
    "studyFirstPostDateStruct": "First posted",
    "locations": "Study sites",
    "centralContacts": "Contacts",
    "overallOfficials": "Investigators",
    "conditions": "Conditions",
    "keywords": "Keywords",
    "meshes": "Condition terms (MeSH)",
    "enrollmentInfo": "Enrollment",
    "phases": "Phase",
    "studyType": "Study type",
    "briefTitle": "Title",
    "officialTitle": "Official title",
    "acronym": "Acronym",
    "briefSummary": "Summary",
    "detailedDescription": "Description",
    "eligibilityCriteria": "Eligibility criteria",
    "eligibilityModule": "Eligibility",
    "minimumAge": "Minimum age",
    "maximumAge": "Maximum age",
    "sex": "Sex",
    "healthyVolunteers": "Accepts healthy volunteers",
    "stdAges": "Age groups",
    "leadSponsor": "Sponsor",
    "collaborators": "Collaborators",
    "interventions": "Treatments studied",
    "armGroups": "Study arms",
    "primaryOutcomes": "Primary outcomes",
    "secondaryOutcomes": "Secondary outcomes",
    "otherOutcomes": "Other outcomes",
    "designInfo": "Study design",
    "expandedAccessInfo": "Expanded access",
    "references": "References",
    "seeAlsoLinks": "Links",
    "ipdSharingStatementModule": "Data sharing plan",
    "documentSection": "Documents",
}

# Segments too generic to name a field on their own ("...enrollmentInfo.count").
_GENERIC = {"count", "type", "date", "name", "value", "id", "class", "status", "term"}
_INDEX = re.compile(r"\[\d+\]|^\d+$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_MONTHS = [
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
]
VALUE_MAX = 300
NAME_MAX = 80  # a study's title where it names a subscription ("Stop alerts for …")


def path_segments(path: str) -> list[str]:
    """'a.locations[3].status' -> ['a', 'locations', 'status'] (indices carry no meaning)."""
    parts = [_INDEX.sub("", part) for part in path.replace("/", ".").split(".")]
    return [part for part in parts if part]


def field_key(path: str) -> str:
    """The segment that names the field: the last known one, else the last non-generic one."""
    segments = path_segments(path)
    for segment in reversed(segments):
        if segment in FIELD_LABELS:
            return segment
    for segment in reversed(segments):
        if segment not in _GENERIC:
            return segment
    return segments[-1] if segments else path


def field_label(path: str) -> str:
    key = field_key(path)
    if key in FIELD_LABELS:
        return FIELD_LABELS[key]
    # Readable fallback: 'lastKnownStatusDateStruct' -> 'Last known status date'.
    words = _CAMEL.sub(" ", key.removesuffix("Struct").removesuffix("Module")).lower()
    words = " ".join(words.replace("_", " ").split())
    return (words[:1].upper() + words[1:]) if words else "Other details"


def status_label(code: object) -> str:
    text = str(code or "")
    return STATUS_LABELS.get(text, text.replace("_", " ").capitalize() or "Unknown status")


def status_meaning(code: object) -> str:
    """'Active, not recruiting — the study has all its participants and no longer takes new
    ones'; the label alone for a status without a known meaning."""
    label = status_label(code)
    meaning = STATUS_MEANINGS.get(str(code or ""))
    return f"{label} — {meaning}" if meaning else label


def change_date(change_kind: object, occurred_on: object) -> str:
    """'Changed on 3 May 2025' (or 'First posted on …' for a new study); '' without a date."""
    text = str(occurred_on or "")[:10]
    if not re.fullmatch(r"\d{4}(-\d{2}){0,2}", text):
        return ""
    verb = "First posted" if change_kind == "new_study" else "Changed"
    return f"{verb} on {date_label(text)}"


def phases_label(phases: object) -> str:
    if not isinstance(phases, list) or not phases:
        return "Not stated"
    return " / ".join(PHASE_LABELS.get(str(p), str(p)) for p in phases)


def date_label(value: str) -> str:
    """CT.gov partial dates: '2025-10-31' -> '31 October 2025', '2027-12' -> 'December 2027'."""
    parts = value.split("-")
    try:
        if len(parts) == 3:
            day = date(int(parts[0]), int(parts[1]), int(parts[2]))
            return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"
        if len(parts) == 2 and 1 <= int(parts[1]) <= 12:
            return f"{_MONTHS[int(parts[1]) - 1]} {int(parts[0])}"
    except ValueError:
        return value
    return value


def location_label(location: dict[str, Any]) -> str:
    place = ", ".join(str(location[k]) for k in ("facility", "city", "country") if location.get(k))
    return place or "a site"


def shorten(text: str, limit: int = VALUE_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def value_label(key: str, value: Any) -> str | None:
    """One readable line for a field value; None when there is no value."""
    if value is None or value == [] or value == {} or value == "":
        return None
    if key in ("overallStatus", "lastKnownStatus"):
        return status_label(value)
    if key == "phases":
        return phases_label(value if isinstance(value, list) else [value])
    if isinstance(value, bool):
        if key == "hasResults":
            return "Posted" if value else "Not posted"
        return "Yes" if value else "No"
    if isinstance(value, dict):
        return shorten(_dict_label(key, value))
    if isinstance(value, list):
        items = [label for item in value if (label := value_label(key, item))]
        return shorten(", ".join(items)) if items else None
    if key == "enrollmentInfo" and isinstance(value, int):
        return f"{value} participants"
    if isinstance(value, str) and re.fullmatch(r"\d{4}(-\d{2}){0,2}", value):
        return date_label(value)
    if isinstance(value, str) and key in ("studyType", "sex"):
        return value.replace("_", " ").capitalize()
    return shorten(str(value))


def _dict_label(key: str, value: dict[str, Any]) -> str:
    if "date" in value:
        text = date_label(str(value["date"]))
        kind = str(value.get("type") or "").lower()
        return f"{text} ({kind})" if kind == "estimated" else text
    if key == "enrollmentInfo" and "count" in value:
        kind = str(value.get("type") or "").lower()
        people = f"{value['count']} participants"
        return f"{people} ({kind})" if kind else people
    if key == "locations" or "facility" in value:
        return location_label(value)
    for name in ("term", "name", "label", "measure", "title", "citation", "count"):
        if value.get(name):
            return str(value[name])
    return "details changed"
