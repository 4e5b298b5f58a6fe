"""ClinicalTrials.gov API v2 study records: validate one, read what the service uses, store it."""

from __future__ import annotations

import datetime
import json
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# [0-9], never \d: \d also matches Arabic-Indic and fullwidth digits.
NCT_RE = re.compile(r"NCT[0-9]{8}")
MESH_RE = re.compile(r"([DC])([0-9]{6,9})")
PARTIAL_DATE_RE = re.compile(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?")
FULL_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
TOKEN_RE = re.compile(r"[A-Z][A-Z0-9_]{0,39}")  # enum values: RECRUITING, PHASE2, DRUG …
DATE_TYPE_RE = re.compile(r"ACTUAL|ESTIMATED")
STUDY_URL = "https://clinicaltrials.gov/study/"

# Absurd-size limits, far above anything CT.gov publishes (brief titles ≤ 300 characters,
# eligibility criteria ≤ 20,000, the largest studies have a few thousand sites).
MAX_RECORD_CHARS = 16_000_000  # total characters of strings, keys and numbers
MAX_DEPTH = 64
MAX_SHORT = 2_000
MAX_LONG = 100_000
MAX_ITEMS = 5_000
MAX_LOCATIONS = 20_000
MAX_SNAPSHOT = 64_000_000  # decompressed bytes load_snapshot accepts


class RecordError(ValueError):
    """A study object that is not a usable API v2 record; the message names the path."""


@dataclass(frozen=True)
class DateStruct:
    date: str  # CT.gov partial date: yyyy, yyyy-MM or yyyy-MM-dd
    type: str | None  # ACTUAL, ESTIMATED or absent

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date, "type": self.type}

    def day(self) -> datetime.date:
        """The first day the partial date can mean ('2027-12' -> 2027-12-01)."""
        parts = [*map(int, self.date.split("-")), 1, 1]
        return datetime.date(parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class Mesh:
    id: str  # canonical: letter + 9 digits, as notifier.normalize.normalize_mesh_id
    term: str
    id_as_received: str

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "id_as_received": self.id_as_received, "term": self.term}


@dataclass(frozen=True)
class Location:
    facility: str | None
    city: str | None
    state: str | None
    zip: str | None
    country: str | None
    status: str | None
    lat: float | None
    lon: float | None


@dataclass(frozen=True)
class Eligibility:
    criteria: str | None
    sex: str | None
    minimum_age: str | None
    maximum_age: str | None
    healthy_volunteers: bool | None
    std_ages: tuple[str, ...]


@dataclass(frozen=True)
class Intervention:
    type: str | None
    name: str


@dataclass(frozen=True)
class StudyRecord:
    nct_id: str
    nct_id_aliases: tuple[str, ...]
    brief_title: str
    official_title: str | None
    acronym: str | None
    overall_status: str
    last_known_status: str | None
    why_stopped: str | None
    study_type: str | None
    phases: tuple[str, ...]
    lead_sponsor: str | None
    start: DateStruct | None
    primary_completion: DateStruct | None
    completion: DateStruct | None
    study_first_post: DateStruct
    last_update_post: DateStruct
    last_update_submit: str | None
    results_first_post: DateStruct | None
    has_results: bool
    conditions: tuple[str, ...]
    keywords: tuple[str, ...]
    interventions: tuple[Intervention, ...]
    condition_mesh: tuple[Mesh, ...]
    condition_mesh_ancestors: tuple[Mesh, ...]
    eligibility: Eligibility | None
    locations: tuple[Location, ...]
    version_holder: str | None
    raw: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def url(self) -> str:
        return STUDY_URL + self.nct_id

    @property
    def version_key(self) -> str:
        """'<lastUpdateSubmitDate>/<lastUpdatePostDate>': names the CT.gov version, the way the
        reference event schema's source.version_key does when no history version is known."""
        return f"{self.last_update_submit or ''}/{self.last_update_post.date}"

    @property
    def version_order(self) -> tuple[str, str]:
        """Sorts record versions oldest first (ISO dates sort as text)."""
        return (self.last_update_post.date, self.last_update_submit or "")


def normalize_mesh_id(value: str) -> str | None:
    """'D055752' and 'D000055752' -> 'D000055752'; None when it is not a MeSH UI."""
    match = MESH_RE.fullmatch(value)
    if match is None:
        return None
    letter, digits = match.groups()
    return f"{letter}{int(digits):09d}"


def parse_record(obj: Any) -> StudyRecord:
    """Validate one API v2 study object (as GET /api/v2/studies/{nctId} returns it)."""
    _check_json(obj)
    if not isinstance(obj, dict):
        raise RecordError(f"study: must be an object, not {_kind(obj)}")
    r = _Reader(obj)
    ps = r.obj(obj, "protocolSection", required=True)
    ident = r.obj(ps, "identificationModule", required=True)
    status = r.obj(ps, "statusModule", required=True)
    design = r.obj(ps, "designModule")
    conds = r.obj(ps, "conditionsModule")
    sponsor = r.obj(r.obj(ps, "sponsorCollaboratorsModule"), "leadSponsor")
    derived = r.obj(obj, "derivedSection")
    browse = r.obj(derived, "conditionBrowseModule")
    return StudyRecord(
        nct_id=r.text(ident, "nctId", required=True, pattern=NCT_RE) or "",
        nct_id_aliases=r.texts(ident, "nctIdAliases", NCT_RE),
        brief_title=r.text(ident, "briefTitle", required=True) or "",
        official_title=r.text(ident, "officialTitle"),
        acronym=r.text(ident, "acronym"),
        overall_status=r.text(status, "overallStatus", required=True, pattern=TOKEN_RE) or "",
        last_known_status=r.text(status, "lastKnownStatus", pattern=TOKEN_RE),
        why_stopped=r.text(status, "whyStopped"),
        study_type=r.text(design, "studyType", pattern=TOKEN_RE),
        phases=r.texts(design, "phases", TOKEN_RE),
        lead_sponsor=r.text(sponsor, "name"),
        start=r.date(status, "startDateStruct"),
        primary_completion=r.date(status, "primaryCompletionDateStruct"),
        completion=r.date(status, "completionDateStruct"),
        study_first_post=r.posted(status, "studyFirstPostDateStruct"),
        last_update_post=r.posted(status, "lastUpdatePostDateStruct"),
        last_update_submit=r.text(status, "lastUpdateSubmitDate", pattern=FULL_DATE_RE),
        results_first_post=r.date(status, "resultsFirstPostDateStruct", full=True),
        has_results=r.flag(obj, "hasResults") or False,
        conditions=r.texts(conds, "conditions"),
        keywords=r.texts(conds, "keywords"),
        interventions=tuple(
            Intervention(
                type=r.text(i, "type", pattern=TOKEN_RE),
                name=r.text(i, "name", required=True) or "",
            )
            for i in r.objs(r.obj(ps, "armsInterventionsModule"), "interventions")
        ),
        condition_mesh=tuple(r.mesh(m) for m in r.objs(browse, "meshes")),
        condition_mesh_ancestors=tuple(r.mesh(m) for m in r.objs(browse, "ancestors")),
        eligibility=r.eligibility(r.obj(ps, "eligibilityModule")),
        locations=tuple(
            r.location(loc) for loc in r.objs(r.obj(ps, "contactsLocationsModule"), "locations")
        ),
        version_holder=r.text(r.obj(derived, "miscInfoModule"), "versionHolder"),
        raw=obj,
    )


class _Reader:
    """Typed access to one record; every error names the JSON path of the offending value."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.paths: dict[int, str] = {id(root): ""}

    def _at(self, parent: Any, key: str) -> tuple[Any, str]:
        path = _join(self.paths.get(id(parent), "?"), key)
        return (parent.get(key) if isinstance(parent, dict) else None), path

    def obj(self, parent: Any, key: str, *, required: bool = False) -> dict[str, Any] | None:
        value, path = self._at(parent, key)
        if value is None:
            if required:
                raise RecordError(f"{path}: missing")
            return None
        if not isinstance(value, dict):
            raise RecordError(f"{path}: must be an object, not {_kind(value)}")
        self.paths[id(value)] = path
        return value

    def _list(self, parent: Any, key: str, typ: type) -> tuple[list[Any], str]:
        value, path = self._at(parent, key)
        if value is None:
            return [], path
        if not isinstance(value, list):
            raise RecordError(f"{path}: must be a list, not {_kind(value)}")
        limit = MAX_LOCATIONS if key == "locations" else MAX_ITEMS
        if len(value) > limit:
            raise RecordError(f"{path}: {len(value)} items, at most {limit}")
        for index, item in enumerate(value):
            if not isinstance(item, typ):
                raise RecordError(f"{path}[{index}]: must be {_kind(typ())}, not {_kind(item)}")
        return value, path

    def objs(self, parent: Any, key: str) -> list[dict[str, Any]]:
        items, path = self._list(parent, key, dict)
        for index, item in enumerate(items):
            self.paths[id(item)] = f"{path}[{index}]"
        return items

    def texts(
        self, parent: Any, key: str, pattern: re.Pattern[str] | None = None
    ) -> tuple[str, ...]:
        items, path = self._list(parent, key, str)
        for index, item in enumerate(items):
            _check_text(item, f"{path}[{index}]", MAX_SHORT, pattern)
        return tuple(items)

    def text(
        self,
        parent: Any,
        key: str,
        *,
        required: bool = False,
        limit: int = MAX_SHORT,
        pattern: re.Pattern[str] | None = None,
    ) -> str | None:
        value, path = self._at(parent, key)
        if value is None:
            if required:
                raise RecordError(f"{path}: missing")
            return None
        _check_text(value, path, limit, pattern)
        if required and not value.strip():
            raise RecordError(f"{path}: must not be empty")
        return value  # type: ignore[no-any-return]  # a str: _check_text raised otherwise

    def date(
        self, parent: Any, key: str, *, full: bool = False, required: bool = False
    ) -> DateStruct | None:
        struct = self.obj(parent, key, required=required)
        if struct is None:
            return None
        pattern = FULL_DATE_RE if full else PARTIAL_DATE_RE
        value = self.text(struct, "date", required=True, pattern=pattern) or ""
        try:
            DateStruct(value, None).day()
        except ValueError:
            _, path = self._at(struct, "date")
            raise RecordError(f"{path}: {value!r} is not a calendar date") from None
        kind = self.text(struct, "type", pattern=DATE_TYPE_RE)
        return DateStruct(value, kind)

    def posted(self, parent: Any, key: str) -> DateStruct:
        """A required posting date: always a full day."""
        struct = self.date(parent, key, full=True)
        if struct is None:
            raise RecordError(f"{self._at(parent, key)[1]}: missing")
        return struct

    def flag(self, parent: Any, key: str) -> bool | None:
        value, path = self._at(parent, key)
        if value is not None and not isinstance(value, bool):
            raise RecordError(f"{path}: must be true or false, not {_kind(value)}")
        return value

    def number(self, parent: Any, key: str, bound: float) -> float | None:
        value, path = self._at(parent, key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"{path}: must be a number, not {_kind(value)}")
        if not -bound <= value <= bound:
            raise RecordError(f"{path}: {value} is outside -{bound}..{bound}")
        return float(value)

    def mesh(self, item: dict[str, Any]) -> Mesh:
        received = self.text(item, "id", required=True, pattern=MESH_RE) or ""
        term = self.text(item, "term", required=True) or ""
        return Mesh(id=normalize_mesh_id(received) or received, term=term, id_as_received=received)

    def eligibility(self, module: dict[str, Any] | None) -> Eligibility | None:
        if module is None:
            return None
        return Eligibility(
            criteria=self.text(module, "eligibilityCriteria", limit=MAX_LONG),
            sex=self.text(module, "sex", pattern=TOKEN_RE),
            minimum_age=self.text(module, "minimumAge"),
            maximum_age=self.text(module, "maximumAge"),
            healthy_volunteers=self.flag(module, "healthyVolunteers"),
            std_ages=self.texts(module, "stdAges", TOKEN_RE),
        )

    def location(self, item: dict[str, Any]) -> Location:
        geo = self.obj(item, "geoPoint")
        return Location(
            facility=self.text(item, "facility"),
            city=self.text(item, "city"),
            state=self.text(item, "state"),
            zip=self.text(item, "zip"),
            country=self.text(item, "country"),
            status=self.text(item, "status", pattern=TOKEN_RE),
            lat=self.number(geo, "lat", 90),
            lon=self.number(geo, "lon", 180),
        )


PATTERN_HINTS: dict[re.Pattern[str], str] = {
    NCT_RE: "NCT followed by 8 ASCII digits",
    MESH_RE: "a MeSH id (D055752 or D000055752)",
    TOKEN_RE: "an enum value like RECRUITING",
    FULL_DATE_RE: "a date (yyyy-MM-dd)",
    PARTIAL_DATE_RE: "a date (yyyy, yyyy-MM or yyyy-MM-dd)",
    DATE_TYPE_RE: "ACTUAL or ESTIMATED",
}


def _check_text(value: Any, path: str, limit: int, pattern: re.Pattern[str] | None) -> None:
    if not isinstance(value, str):
        raise RecordError(f"{path}: must be a string, not {_kind(value)}")
    if len(value) > limit:
        raise RecordError(f"{path}: {len(value):,} characters, at most {limit:,}")
    if pattern is not None and not pattern.fullmatch(value):
        raise RecordError(f"{path}: {value[:50]!r} is not {PATTERN_HINTS[pattern]}")


def _join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "?")


def _check_json(obj: Any) -> None:
    """Plain JSON only, bounded in size and depth, without U+0000 (PostgreSQL cannot store it)."""
    budget = MAX_RECORD_CHARS
    stack: list[tuple[Any, int, str]] = [(obj, 0, "study")]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise RecordError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            budget -= len(value)
            if "\x00" in value:
                raise RecordError(f"{path}: text must not contain U+0000")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise RecordError(f"{path}: keys must be strings")
                if "\x00" in key:
                    raise RecordError(f"{path}: keys must not contain U+0000")
                budget -= len(key) + 4
                stack.append((item, depth + 1, f"{path}.{key}"))
        elif isinstance(value, list):
            budget -= len(value) + 2
            stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise RecordError(f"{path}: numbers must be finite")
            budget -= 24
        elif value is None or isinstance(value, bool | int):
            budget -= 8
        else:
            raise RecordError(f"{path}: {type(value).__name__} is not a JSON value")
        if budget < 0:
            raise RecordError(f"study: larger than {MAX_RECORD_CHARS:,} characters")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same value always gives the same bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def snapshot_bytes(record: StudyRecord) -> bytes:
    """The storage form of a record version: zlib of the canonical JSON of the raw object."""
    return zlib.compress(canonical_json(record.raw), 9)


def load_snapshot(data: bytes) -> StudyRecord:
    """Inverse of snapshot_bytes; a corrupt or oversized snapshot raises RecordError."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_SNAPSHOT)
    except zlib.error as exc:
        raise RecordError(f"snapshot: not zlib data ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise RecordError("snapshot: truncated, or larger than the snapshot limit")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"snapshot: not JSON ({exc})") from None
    return parse_record(obj)
