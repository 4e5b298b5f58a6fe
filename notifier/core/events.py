"""Trial-change events: the pydantic model, and validate-and-store shared by HTTP and the queue."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.exceptions import RedisError
from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core.catalogue import remember_event_studies
from notifier.core.fields import validation_fields
from notifier.core.normalize import (
    MESH_PATTERN,
    NCT_PATTERN,
    is_storable_text,
    normalize_mesh_id,
    normalize_nct,
)
from notifier.data.models import Delivery, Event, EventDeliveryCount, FanoutSlice
from notifier.data.queries import insert_for
from notifier.data.states import OPEN_SLICE
from notifier.metrics import EVENTS
from notifier.queue import enqueue_fanout
from notifier.resources import Resources

log = logging.getLogger("notifier.events")

MAX_BATCH = 500
ChangeKind = Literal[
    "new_study",
    "status_changed",
    "results_posted",
    "recruitment_sites_changed",
    "conditions_changed",
    "dates_changed",
    "study_updated",
    "study_unavailable",
]
Text = Annotated[str, Field(max_length=4000)]
ShortList = Annotated[list[Text], Field(max_length=1000)]


class _Open(BaseModel):
    # Unknown fields are kept (and stored): the pipeline may send more than we read today.
    model_config = ConfigDict(extra="allow")


class EventMesh(_Open):
    id: Annotated[str, Field(max_length=20, json_schema_extra={"pattern": MESH_PATTERN})]
    term: Text

    @field_validator("id")
    @classmethod
    def _mesh_id(cls, value: str) -> str:
        if normalize_mesh_id(value) is None:
            raise ValueError("not a MeSH id (D000000 or D000000000)")
        return value


class EventLocations(_Open):
    count: Annotated[int, Field(ge=0)] | None = None
    countries: ShortList = []
    recruiting_count: Annotated[int, Field(ge=0)] | None = None

    @field_validator("count", "recruiting_count", mode="before")
    @classmethod
    def _json_integer(cls, value: object) -> object:
        # JSON Schema's integer: 3 and 3.0, never true/false or a numeric string (which
        # pydantic's lax mode would take).
        if isinstance(value, (bool, str)):
            raise ValueError("must be an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class EventStudy(_Open):
    brief_title: Annotated[str, Field(min_length=1, max_length=1000)]
    url: Annotated[str, Field(max_length=2000)] | None = None
    overall_status: Annotated[str, Field(max_length=40)] | None = None
    why_stopped: Text | None = None
    conditions: ShortList = []
    keywords: ShortList = []
    condition_mesh: Annotated[list[EventMesh], Field(max_length=1000)] = []
    condition_mesh_ancestors: Annotated[list[EventMesh], Field(max_length=1000)] = []
    locations_summary: EventLocations | None = None


class EventChange(_Open):
    path: Annotated[str, Field(min_length=1, max_length=500)]
    old: Any = None
    new: Any = None


class TrialChangeEvent(_Open):
    """The service's own event schema (published in the OpenAPI spec); a superset of the
    reference schema: everything valid there is valid here."""

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    nct_id: Annotated[str, Field(json_schema_extra={"pattern": NCT_PATTERN})]
    nct_id_aliases: Annotated[
        list[Annotated[str, Field(json_schema_extra={"pattern": NCT_PATTERN})]],
        Field(max_length=100),
    ] = []
    change_kind: ChangeKind
    occurred_on: date
    detected_at: datetime | None = None
    study: EventStudy
    changes: Annotated[list[EventChange], Field(max_length=5000)] = []

    @field_validator("occurred_on", "detected_at", mode="before")
    @classmethod
    def _iso_text(cls, value: object) -> object:
        # JSON carries dates as ISO 8601 text; a number is not one (pydantic would read it as
        # seconds since 1970, which the spec does not allow).
        if value is not None and not isinstance(value, str):
            raise ValueError("must be an ISO 8601 date or date-time string")
        return value

    @field_validator("nct_id")
    @classmethod
    def _nct(cls, value: str) -> str:
        nct = normalize_nct(value)
        if nct is None:
            raise ValueError("must be NCT followed by 8 digits")
        return nct

    @field_validator("nct_id_aliases")
    @classmethod
    def _aliases(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            nct = normalize_nct(value)
            if nct is None:
                raise ValueError("every alias must be NCT followed by 8 digits")
            out.append(nct)
        return out


class EventsInvalid(Exception):
    """A single event or a batch failed validation; `fields` maps locations to messages."""

    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.fields = fields


def parse_events(data: Any) -> list[TrialChangeEvent]:
    """One event object or `{"events": [...]}` -> validated events; all or nothing."""
    if isinstance(data, dict) and "events" in data and "event_id" not in data:
        items = data["events"]
        if not isinstance(items, list) or not items:
            raise EventsInvalid("invalid batch", {"events": "must be a non-empty list"})
        if len(items) > MAX_BATCH:
            raise EventsInvalid(
                "batch too large", {"events": f"at most {MAX_BATCH} events per request"}
            )
        prefix: str | None = "events"
    elif isinstance(data, dict):
        items, prefix = [data], None
    else:
        raise EventsInvalid("invalid event", {"body": "must be an event object or {events: [...]}"})
    events: list[TrialChangeEvent] = []
    fields: dict[str, str] = {}
    for index, item in enumerate(items):
        if _unstorable(item):  # PostgreSQL cannot store these in text or JSONB: was a 503
            fields[f"{prefix}.{index}" if prefix else "body"] = (
                "text must not contain U+0000 or unpaired surrogates (\\ud800-\\udfff)"
            )
            continue
        try:
            events.append(TrialChangeEvent.model_validate(item))
        except ValidationError as exc:
            for name, message in validation_fields(exc).items():
                where = name if prefix is None else f"{prefix}.{index}.{name}"
                fields.setdefault(where, message)
    if fields:
        raise EventsInvalid("invalid event" if prefix is None else "invalid events", fields)
    return events


def _unstorable(value: Any) -> bool:
    """Anywhere in a decoded JSON value, known fields or unknown ones (which are kept too)."""
    if isinstance(value, str):
        return not is_storable_text(value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


@dataclass
class Stored:
    new_pks: list[int] = field(default_factory=list)
    duplicates: int = 0


async def store_events(session: AsyncSession, events: list[TrialChangeEvent]) -> Stored:
    """INSERT … ON CONFLICT (event_id) DO NOTHING; count the ones already known."""
    now = utcnow()
    rows = [
        {
            "event_id": e.event_id,
            "nct_id": e.nct_id,
            "change_kind": e.change_kind,
            "payload": e.model_dump(mode="json"),
            "received_at": now,
            "duplicates": 0,
            "status": "received",
            "fanout_cursor": 0,
            "matched": 0,
        }
        for e in events
    ]
    stmt = (
        insert_for(session, Event)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(Event.id, Event.event_id)
    )
    inserted = {event_id: pk for pk, event_id in (await session.execute(stmt)).all()}
    # A repeat inside one batch counts as a duplicate as well: one row, one fan-out.
    repeats = Counter(e.event_id for e in events)
    extra: dict[int, list[str]] = {}
    for event_id, seen in repeats.items():
        dup = seen - (1 if event_id in inserted else 0)
        if dup:
            extra.setdefault(dup, []).append(event_id)
    for increment, event_ids in extra.items():
        await session.execute(
            update(Event)
            .where(Event.event_id.in_(event_ids))
            .values(duplicates=Event.duplicates + increment)
        )
    return Stored(
        new_pks=sorted(inserted.values()), duplicates=sum(n * len(v) for n, v in extra.items())
    )


async def enqueue_fanouts(r: Resources, pks: list[int]) -> None:
    """Trigger fan-out after commit; if Redis is down the sweep finds the stored events later.

    The job id carries the time of ingestion: an event is enqueued here once (a duplicate is
    never a new row), and a restored or recreated database that hands out a primary key again
    must not find its fan-out refused as the job arq still keeps a result for."""
    stamp = f"{utcnow().timestamp():.6f}"
    try:
        for pk in pks:
            await enqueue_fanout(r, pk, stamp)
    except (RedisError, OSError) as exc:
        log.warning("events stored but fan-out not enqueued (the sweep will): %s", exc)


async def ingest(r: Resources, events: list[TrialChangeEvent], source: str) -> Stored:
    """Store validated events (and the catalogue rows of their studies) in one transaction,
    then enqueue their fan-out."""
    async with r.sessions.begin() as session:
        # Study rows first, in NCT id order, as core.studies takes them: no deadlock between
        # an events batch and a records batch deriving the same event.
        await remember_event_studies(session, events)
        stored = await store_events(session, events)
    await enqueue_fanouts(r, stored.new_pks)
    if stored.new_pks:
        EVENTS.labels("accepted", source).inc(len(stored.new_pks))
    if stored.duplicates:
        EVENTS.labels("duplicate", source).inc(stored.duplicates)
    return stored


def openapi_schemas() -> dict[str, Any]:
    """TrialChangeEvent and its parts as OpenAPI components (refs to #/components/schemas)."""
    schema = TrialChangeEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    parts: dict[str, Any] = schema.pop("$defs", {})
    return {**parts, "TrialChangeEvent": schema}


PROGRESS_FIELDS = (
    "event_id",
    "status",
    "matched",
    "sent",
    "pending",
    "failed",
    "skipped",
    "held",
    "duplicates",
    "compacted_at",
    "payload_purged_at",
)
# When retention removed the event's delivery rows (the counts above stay, per-recipient rows
# and a replay are gone) and cut its payload: ISO 8601 UTC, or null.
PROGRESS_TIMES = ("compacted_at", "payload_purged_at")


async def progress(session: AsyncSession, event_id: str) -> dict[str, Any] | None:
    """Fan-out progress of one event: `matched` is what the fan-out's walk found; `pending`
    includes rows being sent right now and the recipients of slices not yet written as rows."""
    event = await session.scalar(select(Event).where(Event.event_id == event_id))
    if event is None:
        return None
    counts: Counter[str] = Counter()
    for status, n in await session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.event_pk == event.id)
        .group_by(Delivery.status)
    ):
        counts[status] += n
    # Rows retention removed, by status: the answer is the same after compaction.
    for status, n in await session.execute(
        select(EventDeliveryCount.status, EventDeliveryCount.count).where(
            EventDeliveryCount.event_pk == event.id
        )
    ):
        counts[status] += n
    # Recipients of slices not done count as pending too: each open slice's run less the rows
    # written in it so far (by its batch, or by a run before it), in one statement.
    written = (
        select(func.count())
        .where(
            Delivery.event_pk == FanoutSlice.event_pk,
            Delivery.subscriber_id > FanoutSlice.after_id,
            Delivery.subscriber_id <= FanoutSlice.last_id,
        )
        .correlate(FanoutSlice)
        .scalar_subquery()
    )
    left = FanoutSlice.size - written
    unsliced = await session.scalar(
        select(func.coalesce(func.sum(case((left > 0, left), else_=0)), 0)).where(
            FanoutSlice.event_pk == event.id, FanoutSlice.status.in_(OPEN_SLICE)
        )
    )
    return {
        "event_id": event.event_id,
        "status": event.status,
        "matched": event.matched,
        "sent": counts.get("sent", 0),
        "pending": counts.get("pending", 0) + counts.get("sending", 0) + int(unsliced or 0),
        "failed": counts.get("failed", 0),
        "skipped": counts.get("skipped", 0),
        "held": counts.get("held", 0),
        "duplicates": event.duplicates,
        "compacted_at": _iso(event.compacted_at),
        "payload_purged_at": _iso(event.payload_purged_at),
    }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at is not None else None
