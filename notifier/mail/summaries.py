"""What changed in a trial-change event, in words read at a glance, and why it matched."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from notifier.core.normalize import normalize_condition
from notifier.mail.labels import (
    FIELD_LABELS,
    field_key,
    field_label,
    phases_label,
    shorten,
    status_label,
    value_label,
)
from notifier.mail.reasons import match_reason

__all__ = ["ChangeLine", "Summary", "match_reason", "study_facts", "summarize"]


@dataclass(frozen=True)
class ChangeLine:
    """One change: old None means it was not there before; new None means it is gone."""

    label: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Summary:
    material: bool  # False: nothing a participant cares about changed -> no mail
    headline: str  # "Recruiting → Active, not recruiting", "Results posted", "New study"
    lines: list[ChangeLine]  # material changes first


ARROW = "→"
HEADLINE_MAX = 120

# Record keeping that moves without anything changing for a participant. versionHolder moves on
# every CT.gov data reload; derivedSection is CT.gov's own indexing (MeSH), not the sponsor's.
_BOOKKEEPING_KEYS = {
    "versionHolder",
    "statusVerifiedDate",
    "statusVerifiedDateStruct",
    "lastUpdateSubmitDate",
    "lastUpdatePostDateStruct",
    "lastUpdatePostDate",
    "studyFirstSubmitDate",
    "studyFirstSubmitQcDate",
    "resultsFirstSubmitDate",
    "resultsFirstSubmitQcDate",
    "dispFirstSubmitDate",
    "dispFirstSubmitQcDate",
    "orgStudyIdInfo",
    "secondaryIdInfos",
    "organization",
    "responsibleParty",
}
_BOOKKEEPING_SECTIONS = ("derivedSection", "annotationSection", "miscInfoModule", "oversightModule")

# Material changes in the order a reader cares about them; everything else comes after.
_RANK = {
    "overallStatus": 0,
    "hasResults": 1,
    "resultsFirstPostDateStruct": 1,
    "resultsSection": 1,
    "whyStopped": 2,
    "locations": 3,
    "conditions": 4,
    "eligibilityCriteria": 5,
    "eligibilityModule": 5,
    "minimumAge": 5,
    "maximumAge": 5,
    "sex": 5,
    "healthyVolunteers": 5,
    "enrollmentInfo": 6,
    "phases": 6,
    "interventions": 6,
    "startDateStruct": 7,
    "primaryCompletionDateStruct": 7,
    "completionDateStruct": 7,
    "briefTitle": 8,
    "centralContacts": 8,
}
_OTHER_RANK = 50

_KIND_HEADLINES = {
    "new_study": "New study",
    "results_posted": "Results posted",
    "study_unavailable": "No longer listed on ClinicalTrials.gov",
    "recruitment_sites_changed": "Study sites updated",
    "conditions_changed": "Conditions updated",
    "dates_changed": "Dates updated",
    "study_updated": "Study details updated",
}
_ALWAYS_MATERIAL = {"new_study", "results_posted", "study_unavailable"}


def is_bookkeeping(path: str) -> bool:
    segments = path.replace("[", ".").split(".")
    if any(seg in _BOOKKEEPING_SECTIONS for seg in segments):
        return True
    return field_key(path) in _BOOKKEEPING_KEYS


def is_material(event: dict[str, Any]) -> bool:
    """False when nothing a participant cares about changed: no mail at all. The rule is what
    the mail would show: a change with no line in the summary is not worth a mail."""
    return summarize(event).material


def summarize(event: dict[str, Any]) -> Summary:
    kind = str(event.get("change_kind") or "")
    study: dict[str, Any] = event.get("study") or {}
    changes = [c for c in event.get("changes") or [] if isinstance(c, dict)]
    if kind == "new_study":
        return Summary(True, "New study", study_facts(study))

    ranked: list[tuple[int, int, ChangeLine]] = []
    results_posted = _results_date(changes)
    headlines: dict[int, str] = {}
    changes = _merge_site_changes(changes)
    for order, change in enumerate(changes):
        path = str(change.get("path") or "")
        if not path or is_bookkeeping(path):
            continue
        key = field_key(path)
        if key == "hasResults" and (results_posted or change.get("new") is not True):
            # Shown as one "Results" line from resultsFirstPostDateStruct (or not news at all).
            if change.get("new") is True:
                headlines.setdefault(1, "Results posted")
            continue
        if key == "locations":
            lines, headline = _site_lines(change)
        else:
            lines = _field_lines(path, key, change, results_posted)
            headline = _line_headline(key, lines[0]) if lines else ""
        rank = _RANK.get(key, _OTHER_RANK)
        if lines and headline:
            headlines.setdefault(rank, headline)
        ranked.extend((rank, order, line) for line in lines)

    ranked.sort(key=lambda item: (item[0], item[1]))
    lines = [line for _, _, line in ranked]
    if kind == "results_posted":
        headlines[-1] = "Results posted"
    if kind == "study_unavailable":
        headlines[-2] = _KIND_HEADLINES[kind]
    if not lines and not changes and kind not in _ALWAYS_MATERIAL:
        # No details from the pipeline: trust its classification rather than stay silent.
        return Summary(True, _kind_headline(kind, study), [])
    if not lines and kind not in _ALWAYS_MATERIAL:
        return Summary(False, "No change that affects participants", [])
    headline = headlines[min(headlines)] if headlines else _kind_headline(kind, study)
    return Summary(True, shorten(headline, HEADLINE_MAX), lines)


def _kind_headline(kind: str, study: dict[str, Any]) -> str:
    if kind == "status_changed":
        return f"Now {status_label(study.get('overall_status'))}"
    return _KIND_HEADLINES.get(kind, "Study details updated")


def _results_date(changes: list[dict[str, Any]]) -> str | None:
    for change in changes:
        if field_key(str(change.get("path") or "")) == "resultsFirstPostDateStruct":
            new = change.get("new")
            if isinstance(new, dict) and new.get("date"):
                return value_label("date", str(new["date"]))
    return None


def _field_lines(
    path: str, key: str, change: dict[str, Any], results_posted: str | None
) -> list[ChangeLine]:
    label = field_label(path)
    if key == "resultsFirstPostDateStruct" and results_posted:
        return [ChangeLine("Results", None, f"Posted on {results_posted}")]
    if key == "hasResults":
        return [ChangeLine("Results", None, "Posted")]
    added, removed = change.get("added"), change.get("removed")
    if isinstance(added, list) or isinstance(removed, list):
        lines = []
        if gone := value_label(key, removed or []):
            lines.append(ChangeLine(f"{label} removed", gone, None))
        if new := value_label(key, added or []):
            lines.append(ChangeLine(f"{label} added", None, new))
        # Added first: a new condition or treatment is the news.
        return sorted(lines, key=lambda line: line.new is None)
    old, new = value_label(key, change.get("old")), value_label(key, change.get("new"))
    if old == new:
        return []
    return [ChangeLine(label, old, new)]


def _line_headline(key: str, line: ChangeLine) -> str:
    if key == "overallStatus":
        return f"{line.old} {ARROW} {line.new}" if line.old and line.new else f"Now {line.new}"
    if key in ("resultsFirstPostDateStruct", "resultsSection", "hasResults"):
        return "Results posted" if key != "resultsSection" else "Results updated"
    text = (
        f"{line.label}: {line.old} {ARROW} {line.new}"
        if line.old and line.new
        else f"{line.label}: {line.new or line.old}"
    )
    return text if len(text) <= 90 else f"{FIELD_LABELS.get(key, line.label)} updated"


# -- study sites ------------------------------------------------------------------------------

FEW_SITES = 2  # one or two opened or closed sites are named; more are counted by country


def _merge_site_changes(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Changes derived from records (core.study_diff) come one per site: `{path: …locations,
    op: add|remove|replace, old: site, new: site}`. They become one {added, removed} change
    where the first of them stood, so the alert has one "Study sites" block."""
    per_site = [
        c
        for c in changes
        if field_key(str(c.get("path") or "")) == "locations"
        and (isinstance(c.get("old"), dict) or isinstance(c.get("new"), dict))
    ]
    if not per_site:
        return changes
    merged: dict[str, Any] = {
        "path": per_site[0]["path"],
        "added": [c["new"] for c in per_site if isinstance(c.get("new"), dict)],
        "removed": [c["old"] for c in per_site if isinstance(c.get("old"), dict)],
    }
    out: list[dict[str, Any]] = []
    for change in changes:
        if change is per_site[0]:
            out.append(merged)
        elif not any(change is c for c in per_site):
            out.append(change)
    return out


def _site_key(location: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        normalize_condition(str(location.get(k) or "")) for k in ("facility", "city", "country")
    )


def _sites(value: object) -> dict[tuple[str, ...], dict[str, Any]]:
    if not isinstance(value, list):
        return {}
    return {_site_key(loc): loc for loc in value if isinstance(loc, dict)}


def _site_lines(change: dict[str, Any]) -> tuple[list[ChangeLine], str]:
    if "added" in change or "removed" in change:
        added, removed = _sites(change.get("added")), _sites(change.get("removed"))
    else:
        before, after = _sites(change.get("old")), _sites(change.get("new"))
        added = {k: v for k, v in after.items() if k not in before or before[k] != v}
        removed = {k: v for k, v in before.items() if k not in after or after[k] != v}
    new = [added[k] for k in added if k not in removed]
    gone = [removed[k] for k in removed if k not in added]
    moved = [
        (removed[k], added[k])
        for k in added
        if k in removed and removed[k].get("status") != added[k].get("status")
    ]
    lines: list[ChangeLine] = []
    if new:
        lines.append(ChangeLine("New sites", None, _by_country(new)))
    if gone:
        lines.append(ChangeLine("Sites no longer listed", _by_country(gone), None))
    for was, now_site in moved[:5]:
        place = _place(now_site)
        old = status_label(was["status"]) if was.get("status") else None
        now = status_label(now_site["status"]) if now_site.get("status") else None
        lines.append(ChangeLine(f"Site {place or 'status'}", old, now))
    if len(moved) > 5:
        lines.append(ChangeLine("Other sites", None, f"{len(moved) - 5} more changed status"))
    return lines, _site_headline(new, gone, moved)


def _countries(locations: list[dict[str, Any]]) -> list[tuple[str, int]]:
    counts = Counter(str(loc.get("country") or "an unnamed country") for loc in locations)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _place(location: dict[str, Any]) -> str:
    return ", ".join(str(location[k]) for k in ("facility", "city", "country") if location.get(k))


def _by_country(locations: list[dict[str, Any]]) -> str:
    """A few sites by name ("Hospital A, Lyon, France; …"), more as counts per country."""
    if len(locations) <= FEW_SITES and all(_place(loc) for loc in locations):
        return shorten("; ".join(_place(loc) for loc in locations))
    parts = []
    for country, count in _countries(locations):
        cities = sorted(
            {
                str(loc["city"])
                for loc in locations
                if loc.get("city") and loc.get("country") == country
            }
        )
        where = f" ({', '.join(cities[:5])}{', …' if len(cities) > 5 else ''})" if cities else ""
        parts.append(f"{count} in {country}{where}")
    return shorten("; ".join(parts))


def _site_headline(
    new: list[dict[str, Any]], gone: list[dict[str, Any]], moved: list[tuple[Any, Any]]
) -> str:
    if new:
        countries = [country for country, _ in _countries(new)]
        sites = f"{len(new)} new site{'s' if len(new) != 1 else ''}"
        if len(countries) == 1:
            return f"{sites} in {countries[0]}"
        if len(countries) == 2:
            return f"{sites} in {countries[0]} and {countries[1]}"
        return f"{sites} in {len(countries)} countries"
    if gone:
        return f"{len(gone)} site{'s' if len(gone) != 1 else ''} no longer listed"
    if moved:
        return f"Site status changed at {len(moved)} site{'s' if len(moved) != 1 else ''}"
    return ""


# -- new studies ------------------------------------------------------------------------------


def study_facts(study: dict[str, Any]) -> list[ChangeLine]:
    """What a condition follower wants to know about a new study: status, phase, sponsor, where."""
    facts = [ChangeLine("Status", None, status_label(study.get("overall_status")))]
    if study.get("phases"):
        facts.append(ChangeLine("Phase", None, phases_label(study["phases"])))
    if study.get("lead_sponsor"):
        facts.append(ChangeLine("Sponsor", None, shorten(str(study["lead_sponsor"]))))
    if conditions := value_label("conditions", study.get("conditions")):
        facts.append(ChangeLine("Conditions", None, conditions))
    places = study.get("locations_summary") or {}
    if isinstance(places, dict) and places.get("count"):
        count = int(places["count"])
        countries = [str(c) for c in places.get("countries") or []]
        where = f" in {shorten(', '.join(countries), 120)}" if countries else ""
        facts.append(ChangeLine("Sites", None, f"{count} site{'s' if count != 1 else ''}{where}"))
    start = (study.get("dates") or {}).get("start")
    if isinstance(start, dict) and (text := value_label("startDateStruct", start)):
        facts.append(ChangeLine("Start date", None, text))
    return facts
