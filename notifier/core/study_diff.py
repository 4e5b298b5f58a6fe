"""Two versions of a study record -> trial-change events, with ids any deriver computes alike.

Event ids follow the reference event schema (tests/data/trial_change_event.schema.json):
sha256 hex of '<nct_id>|<version_key>|<change_kind>', version_key being
'<lastUpdateSubmitDate>/<lastUpdatePostDate>' of the newer record. A pipeline that derives the
same kind from the same CT.gov version gets the same id (see event_id_for), whatever older
version each side diffed against; a status that flips back and forth gets a new id every time.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from notifier.core.ctgov import DateStruct, Location, Mesh, StudyRecord, canonical_json

KINDS = (
    "new_study",
    "status_changed",
    "results_posted",
    "dates_changed",
    "recruitment_sites_changed",
    "conditions_changed",
    "study_updated",
)
STATUS = "protocolSection.statusModule"
CONDITIONS = "protocolSection.conditionsModule"
LOCATIONS = "protocolSection.contactsLocationsModule.locations"
DATES = {
    "startDateStruct": "start",
    "primaryCompletionDateStruct": "primary_completion",
    "completionDateStruct": "completion",
}
# Dates CT.gov stamps on every submission and QC round: a new version, not a change in the study.
BOOKKEEPING = frozenset(
    {
        "statusVerifiedDate",
        "lastUpdateSubmitDate",
        "lastUpdatePostDateStruct",
        "studyFirstSubmitDate",
        "studyFirstSubmitQcDate",
        "resultsFirstSubmitDate",
        "resultsFirstSubmitQcDate",
        "dispositionFirstSubmitDate",
        "dispositionFirstSubmitQcDate",
        "dispositionFirstPostDateStruct",
    }
)
MAX_VALUE_CHARS = 4_000  # a changed value longer than this is named in `changes`, not copied
_SPACES = re.compile(r"\s+")

Change = dict[str, Any]


def event_id_for(nct_id: str, kind: str, version_key: str) -> str:
    """The idempotency key of one kind of change in one CT.gov record version."""
    return hashlib.sha256(f"{nct_id}|{version_key}|{kind}".encode()).hexdigest()


def material_fingerprint(record: StudyRecord) -> str:
    """Hash of what diff() compares plus the condition MeSH the service shows: equal fingerprints
    mean diff() derives nothing, so a reload that only touched bookkeeping can skip it."""
    mesh = [sorted({(m.id, m.term) for m in ms}) for ms in _meshes(record)]
    return hashlib.sha256(canonical_json([_view(record), mesh])).hexdigest()


def is_stale(old: StudyRecord, new: StudyRecord) -> bool:
    """`new` is an older CT.gov version than `old` (a late retry): keep `old`, derive nothing."""
    return new.version_order < old.version_order


def diff(
    old: StudyRecord | None,
    new: StudyRecord,
    *,
    new_study_window_days: int,
    today: date,
    detected_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """Events that `new` derives after `old` (None: first sight), one per kind, in KINDS order.

    A first sight derives `new_study` only when the study was first posted within the window,
    so importing a mirror of old records mails nobody.
    """
    if new_study_window_days < 0:
        raise ValueError("new_study_window_days must not be negative")
    seen = detected_at or datetime(today.year, today.month, today.day, tzinfo=UTC)
    if seen.tzinfo is None:  # a naive time is taken as UTC, never as the host's local time
        seen = seen.replace(tzinfo=UTC)
    stamp = seen.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if old is None:
        first = new.study_first_post
        if (today - first.day()).days > new_study_window_days:
            return []
        return [_event(new, "new_study", first.date, [], stamp)]
    if old.nct_id != new.nct_id:
        raise ValueError(f"cannot diff {old.nct_id} against {new.nct_id}")
    if is_stale(old, new):
        return []
    owned = {f"{STATUS}.{key}" for key in ("overallStatus", *DATES)}
    owned |= {f"{CONDITIONS}.conditions", f"{CONDITIONS}.keywords", LOCATIONS}
    found: dict[str, tuple[str, list[Change]]] = {}
    posted = new.last_update_post.date
    if old.overall_status != new.overall_status:
        found["status_changed"] = (posted, _status_changes(old, new))
        owned |= {f"{STATUS}.whyStopped", f"{STATUS}.lastKnownStatus"}
    if (new.has_results and not old.has_results) or (
        new.results_first_post and not old.results_first_post
    ):
        day = new.results_first_post.date if new.results_first_post else posted
        changes = _changed("hasResults", old.has_results, new.has_results)
        changes += _changed(
            f"{STATUS}.resultsFirstPostDateStruct",
            _struct(old.results_first_post),
            _struct(new.results_first_post),
        )
        found["results_posted"] = (day, changes)
        owned |= {"hasResults", f"{STATUS}.resultsFirstPostDateStruct", "resultsSection"}
    for kind, changes in (
        ("dates_changed", _date_changes(old, new)),
        ("recruitment_sites_changed", _site_changes(old.locations, new.locations)),
        ("conditions_changed", _condition_changes(old, new)),
        ("study_updated", _leaf_changes(_view(old), _view(new), "", owned)),
    ):
        if changes:
            found[kind] = (posted, changes)
    return [_event(new, kind, *found[kind], stamp) for kind in KINDS if kind in found]


def _event(
    record: StudyRecord, kind: str, occurred_on: str, changes: list[Change], stamp: str
) -> dict[str, Any]:
    holder = record.version_holder
    event: dict[str, Any] = {
        "schema_version": "1",
        "event_id": event_id_for(record.nct_id, kind, record.version_key),
        "nct_id": record.nct_id,
        "change_kind": kind,
        "occurred_on": occurred_on,
        "submitted_on": record.last_update_submit,
        "detected_at": stamp,
        "source": {
            "system": "clinicaltrials.gov",
            "version_holder": holder if holder and _is_day(holder) else None,
            "version_key": record.version_key,
        },
        "study": study_summary(record),
        "changes": [_clip(change) for change in changes],
    }
    if record.nct_id_aliases:
        event["nct_id_aliases"] = list(record.nct_id_aliases)
    return event


def study_summary(record: StudyRecord) -> dict[str, Any]:
    """The event's `study` object (field names of the reference event schema)."""
    countries = sorted({loc.country for loc in record.locations if loc.country})
    return {
        "url": record.url,
        "brief_title": record.brief_title,
        "official_title": record.official_title,
        "acronym": record.acronym,
        "overall_status": record.overall_status,
        "last_known_status": record.last_known_status,
        "why_stopped": record.why_stopped,
        "study_type": record.study_type,
        "phases": list(record.phases),
        "lead_sponsor": record.lead_sponsor,
        "has_results": record.has_results,
        "dates": {
            "study_first_post": _struct(record.study_first_post),
            "last_update_post": _struct(record.last_update_post),
            "results_first_post": _struct(record.results_first_post),
            **{name: _struct(getattr(record, name)) for name in DATES.values()},
        },
        "conditions": list(record.conditions),
        "keywords": list(record.keywords),
        "interventions": [{"type": i.type, "name": i.name} for i in record.interventions],
        "condition_mesh": [m.as_json() for m in record.condition_mesh],
        "condition_mesh_ancestors": [m.as_json() for m in record.condition_mesh_ancestors],
        "locations_summary": {
            "count": len(record.locations),
            "countries": countries,
            "recruiting_count": sum(loc.status == "RECRUITING" for loc in record.locations),
        },
    }


def _status_changes(old: StudyRecord, new: StudyRecord) -> list[Change]:
    return (
        _changed(f"{STATUS}.overallStatus", old.overall_status, new.overall_status)
        + _changed(f"{STATUS}.whyStopped", old.why_stopped, new.why_stopped)
        + _changed(f"{STATUS}.lastKnownStatus", old.last_known_status, new.last_known_status)
    )


def _date_changes(old: StudyRecord, new: StudyRecord) -> list[Change]:
    changes: list[Change] = []
    for key, name in DATES.items():
        before, after = _struct(getattr(old, name)), _struct(getattr(new, name))
        changes += _changed(f"{STATUS}.{key}", before, after)
    return changes


def _condition_changes(old: StudyRecord, new: StudyRecord) -> list[Change]:
    """Conditions and keywords as sets of normalised text; when they change, the MeSH terms CT.gov
    derived from them go along. MeSH alone (a re-indexing, id padding) is no change."""
    changes: list[Change] = []
    for key in ("conditions", "keywords"):
        before, after = getattr(old, key), getattr(new, key)
        added = _minus(after, before)
        removed = _minus(before, after)
        if added or removed:
            path = f"{CONDITIONS}.{key}"
            old_list, new_list = list(before), list(after)
            changes.append(
                {"path": path, "op": "replace", "old": old_list, "new": new_list}
                | {"added": added, "removed": removed}
            )
    if changes:
        for key, before_ms, after_ms in zip(
            ("meshes", "ancestors"), _meshes(old), _meshes(new), strict=True
        ):
            was = {m.id: m.term for m in before_ms}
            now = {m.id: m.term for m in after_ms}
            added_m = [{"id": i, "term": now[i]} for i in sorted(now.keys() - was.keys())]
            removed_m = [{"id": i, "term": was[i]} for i in sorted(was.keys() - now.keys())]
            if added_m or removed_m:
                path = f"derivedSection.conditionBrowseModule.{key}"
                changes.append(
                    {"path": path, "op": "replace", "added": added_m, "removed": removed_m}
                )
    return changes


def _site_changes(before: Iterable[Location], after: Iterable[Location]) -> list[Change]:
    """Sites keyed by facility + city + country (several 'Research Site's may share a key, so
    each key holds a multiset of statuses). A status that disappears is no change: CT.gov stops
    showing site statuses once a study stops recruiting, and status_changed says so already."""
    was: defaultdict[tuple[str, ...], list[Location]] = defaultdict(list)
    now: defaultdict[tuple[str, ...], list[Location]] = defaultdict(list)
    for group, locations in ((was, before), (now, after)):
        for loc in locations:
            group[tuple(_norm(v or "") for v in (loc.facility, loc.city, loc.country))].append(loc)
    changes: list[Change] = []
    for key in sorted(was.keys() | now.keys()):
        gone = _by_status(was[key], now[key])
        came = _by_status(now[key], was[key])
        while gone and came:
            closed, opened = gone.pop(0), came.pop(0)
            if opened.status is not None:
                changes.append(
                    {
                        "path": LOCATIONS,
                        "op": "replace",
                        "old": site_fields(closed),
                        "new": site_fields(opened),
                    }
                )
        changes += [{"path": LOCATIONS, "op": "remove", "old": site_fields(loc)} for loc in gone]
        changes += [{"path": LOCATIONS, "op": "add", "new": site_fields(loc)} for loc in came]
    return changes


def _by_status(these: list[Location], others: list[Location]) -> list[Location]:
    """The sites of `these` whose status is not matched by one of `others`, by status."""
    spare = Counter(loc.status or "" for loc in these) - Counter(loc.status or "" for loc in others)
    out: list[Location] = []
    for loc in sorted(these, key=lambda loc: loc.status or ""):
        if spare[loc.status or ""] > 0:
            spare[loc.status or ""] -= 1
            out.append(loc)
    return out


def site_fields(loc: Location) -> dict[str, Any]:
    """A site as alerts name it (and as study_sites stores it, with its position)."""
    return {
        "facility": loc.facility,
        "city": loc.city,
        "state": loc.state,
        "zip": loc.zip,
        "country": loc.country,
        "status": loc.status,
    }


def _view(record: StudyRecord) -> dict[str, Any]:
    """The record as diff() compares it: no derivedSection (MeSH, model predictions,
    versionHolder), no bookkeeping dates, set-like lists sorted, sites without geoPoint/contacts,
    and no empty values (CT.gov sometimes sends `{}` for an absent module)."""
    raw = dict(record.raw)
    raw.pop("derivedSection", None)
    ps = dict(raw.get("protocolSection") or {})
    ps["statusModule"] = {
        k: v for k, v in (ps.get("statusModule") or {}).items() if k not in BOOKKEEPING
    }
    if isinstance(ps.get("conditionsModule"), dict):
        module = dict(ps["conditionsModule"])
        for key in ("conditions", "keywords"):
            if isinstance(module.get(key), list):
                module[key] = sorted(module[key])
        ps["conditionsModule"] = module
    if isinstance(ps.get("contactsLocationsModule"), dict):
        module = dict(ps["contactsLocationsModule"])
        module["locations"] = sorted(
            (site_fields(loc) for loc in record.locations), key=lambda s: canonical_json(s)
        )
        ps["contactsLocationsModule"] = module
    raw["protocolSection"] = ps
    pruned = _prune(raw)
    return pruned if isinstance(pruned, dict) else {}


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])} or None
    if isinstance(value, list):
        return [_prune(v) for v in value] or None
    return value


def _leaf_changes(before: Any, after: Any, path: str, owned: set[str]) -> list[Change]:
    """Differences between two views, at the deepest object key; lists compare whole."""
    if path in owned or before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[Change] = []
        for key in sorted(before.keys() | after.keys()):
            sub = f"{path}.{key}" if path else key
            changes += _leaf_changes(before.get(key), after.get(key), sub, owned)
        return changes
    return _changed(path, before, after)


def _changed(path: str, before: Any, after: Any) -> list[Change]:
    if before == after:
        return []
    if before is None:
        return [{"path": path, "op": "add", "new": after}]
    if after is None:
        return [{"path": path, "op": "remove", "old": before}]
    return [{"path": path, "op": "replace", "old": before, "new": after}]


def _clip(change: Change) -> Change:
    """Long values (a rewritten eligibility text, a results section) are named, not copied."""
    return {
        k: v
        for k, v in change.items()
        if k not in ("old", "new") or len(canonical_json(v)) <= MAX_VALUE_CHARS
    }


def _struct(value: DateStruct | None) -> dict[str, Any] | None:
    return value.as_json() if value is not None else None


def _meshes(record: StudyRecord) -> tuple[tuple[Mesh, ...], tuple[Mesh, ...]]:
    return record.condition_mesh, record.condition_mesh_ancestors


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip().casefold()


def _minus(these: Iterable[str], others: Iterable[str]) -> list[str]:
    known = {_norm(t) for t in others}
    return sorted({t for t in these if _norm(t) not in known})


def _is_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10
