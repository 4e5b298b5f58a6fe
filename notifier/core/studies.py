"""Study records in: validate a batch, store each as the study's latest snapshot, diff it against
the previous one and store the derived events, all in one transaction; then enqueue fan-outs.

Shared by POST /v1/studies and `notifier sync`. Derived events go through core.events'
store_events, so the same change arriving as an event and as a record is one event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core.ctgov import (
    RecordError,
    StudyRecord,
    load_snapshot,
    parse_record,
    snapshot_bytes,
)
from notifier.core.events import Stored, TrialChangeEvent, enqueue_fanouts, store_events
from notifier.core.study_diff import diff, is_stale, material_fingerprint, site_fields
from notifier.data.queries import insert_for
from notifier.data.study_queries import latest_snapshot, purge_versions, replace_sites
from notifier.data.study_tables import Study, StudyVersion
from notifier.metrics import EVENTS
from notifier.resources import Resources

NEW, CHANGED, UNCHANGED, STALE = "new", "changed", "unchanged", "stale"


class StudiesInvalid(Exception):
    """A request body or batch that cannot be stored; `fields` names each bad record."""

    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.fields = fields


def parse_studies(data: Any, max_batch: int) -> list[StudyRecord]:
    """One API v2 study object or `{"studies": [...]}` -> records; all or nothing."""
    if isinstance(data, dict) and "studies" in data and "protocolSection" not in data:
        items = data["studies"]
        if not isinstance(items, list) or not items:
            raise StudiesInvalid("invalid batch", {"studies": "must be a non-empty list"})
        if len(items) > max_batch:
            raise StudiesInvalid(
                "batch too large", {"studies": f"at most {max_batch} records per request"}
            )
        names = [f"studies.{i}" for i in range(len(items))]
    elif isinstance(data, dict):
        items, names = [data], ["study"]
    else:
        raise StudiesInvalid(
            "invalid study", {"body": "must be a study object or {studies: [...]}"}
        )
    records: list[StudyRecord] = []
    fields: dict[str, str] = {}
    for name, item in zip(names, items, strict=True):
        try:
            records.append(parse_record(item))
        except RecordError as exc:
            fields[name] = f"{_nct_of(item) or 'record'}: {exc}"
    if fields:
        raise StudiesInvalid("invalid study" if len(items) == 1 else "invalid studies", fields)
    return records


def _nct_of(item: Any) -> str | None:
    """The NCT id a bad record claims, for the error message (never trusted otherwise)."""
    try:
        nct = item["protocolSection"]["identificationModule"]["nctId"]
    except (KeyError, TypeError):
        return None
    return nct[:20] if isinstance(nct, str) else None


@dataclass
class Outcome:
    nct_id: str
    outcome: str  # new | changed | unchanged | stale
    version_key: str
    kinds: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "nct_id": self.nct_id,
            "outcome": self.outcome,
            "version_key": self.version_key,
            "kinds": self.kinds,
        }


@dataclass
class Ingested:
    outcomes: list[Outcome]
    stored: Stored

    def counts(self) -> dict[str, int]:
        counts = {NEW: 0, CHANGED: 0, UNCHANGED: 0, STALE: 0}
        for outcome in self.outcomes:
            counts[outcome.outcome] += 1
        return counts


@dataclass(frozen=True)
class Policy:
    versions_kept: int
    new_study_window_days: int
    alerts: bool = True  # False: store snapshots, derive no events (a bootstrap import)


async def ingest_records(
    r: Resources, records: Sequence[StudyRecord], source: str, *, alerts: bool = True
) -> Ingested:
    """Store records and their derived events in one transaction, then enqueue the fan-outs."""
    policy = Policy(r.settings.study_versions_kept, r.settings.new_study_window_days, alerts)
    async with r.sessions.begin() as session:
        ingested = await store_records(session, records, policy, today=utcnow().date())
    await enqueue_fanouts(r, ingested.stored.new_pks)
    if ingested.stored.new_pks:
        EVENTS.labels("accepted", source).inc(len(ingested.stored.new_pks))
    if ingested.stored.duplicates:
        EVENTS.labels("duplicate", source).inc(ingested.stored.duplicates)
    return ingested


async def store_records(
    session: AsyncSession, records: Sequence[StudyRecord], policy: Policy, *, today: date
) -> Ingested:
    """The transaction's work; studies are locked in NCT id order (no deadlock between two
    batches), records of one study in the order given."""
    order = sorted(range(len(records)), key=lambda i: records[i].nct_id)
    outcomes: dict[int, Outcome] = {}
    derived: list[dict[str, Any]] = []
    for index in order:
        outcome, events = await _store_one(session, records[index], policy, today)
        outcomes[index] = outcome
        derived.extend(events)
    try:
        events_in = [TrialChangeEvent.model_validate(event) for event in derived]
    except ValidationError as exc:  # a record beyond the event schema's bounds
        raise RecordError(f"derived event invalid: {exc.errors()[0]['msg']}") from exc
    stored = await store_events(session, events_in) if events_in else Stored()
    return Ingested([outcomes[i] for i in range(len(records))], stored)


async def _store_one(
    session: AsyncSession, record: StudyRecord, policy: Policy, today: date
) -> tuple[Outcome, list[dict[str, Any]]]:
    study = await _lock_study(session, record)
    fingerprint = material_fingerprint(record)
    outcome = Outcome(record.nct_id, NEW, record.version_key)
    previous: StudyRecord | None = None
    if study.versions:
        if study.version_key == record.version_key and study.fingerprint == fingerprint:
            outcome.outcome = UNCHANGED
            return outcome, []
        snapshot = await latest_snapshot(session, record.nct_id)
        previous = load_snapshot(snapshot) if snapshot is not None else None
        if previous is not None and is_stale(previous, record):
            outcome.outcome = STALE
            return outcome, []
        outcome.outcome = CHANGED
    events = diff(previous, record, new_study_window_days=policy.new_study_window_days, today=today)
    outcome.kinds = [str(e["change_kind"]) for e in events]
    if previous is not None and not events and study.fingerprint == fingerprint:
        # A new CT.gov version that touched only bookkeeping: nothing to keep or say.
        outcome.outcome = UNCHANGED
        return outcome, []
    if previous is not None and not events:
        outcome.outcome = UNCHANGED  # what changed derives no event (e.g. coordinates only)
    first_version = study.versions == 0
    study.versions += 1
    session.add(
        StudyVersion(
            nct_id=record.nct_id,
            seq=study.versions,
            version_key=record.version_key,
            snapshot=snapshot_bytes(record),
            stored_at=utcnow(),
        )
    )
    _catalogue(study, record, fingerprint)
    await session.flush()
    # Round trips are most of the cost (bench/studies_ingest): skip the ones that cannot matter.
    if study.versions > policy.versions_kept:
        await purge_versions(session, record.nct_id, study.versions, policy.versions_kept)
    sites = [_site(loc) for loc in record.locations]
    await replace_sites(session, record.nct_id, sites, replace=not first_version)
    return outcome, events if policy.alerts else []


async def _lock_study(session: AsyncSession, record: StudyRecord) -> Study:
    """The study's row, locked for the rest of the transaction (created if new). The INSERT
    comes first: on SQLite it takes the write lock before anything is read, and on PostgreSQL
    a concurrent first post of the same study waits on the key, then finds the row."""
    await session.execute(
        insert_for(session, Study)
        .values(
            nct_id=record.nct_id,
            brief_title=record.brief_title,
            conditions=[],
            condition_mesh=[],
            versions=0,
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["nct_id"])
    )
    study = await session.scalar(
        select(Study)
        .where(Study.nct_id == record.nct_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert study is not None  # inserted or already there, and rows are never deleted here
    return study


def _catalogue(study: Study, record: StudyRecord, fingerprint: str) -> None:
    study.brief_title = record.brief_title
    study.short_title = record.acronym
    study.overall_status = record.overall_status
    study.why_stopped = record.why_stopped
    study.conditions = list(record.conditions)
    study.condition_mesh = [{"id": m.id, "term": m.term} for m in record.condition_mesh]
    study.first_posted = record.study_first_post.date
    study.last_update_posted = record.last_update_post.date
    study.version_key = record.version_key
    study.fingerprint = fingerprint
    study.updated_at = utcnow()


def _site(loc: Any) -> dict[str, Any]:
    return {**site_fields(loc), "latitude": loc.lat, "longitude": loc.lon}
