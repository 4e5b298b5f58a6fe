"""The study catalogue as events feed it: a title for every study an event names, so pages and
mail can name studies the service has no record of (the records' side is core.studies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.data.queries import insert_for
from notifier.data.study_tables import Study

if TYPE_CHECKING:
    from notifier.core.events import TrialChangeEvent

SHORT_TITLE_CHARS = 300


async def remember_event_studies(session: AsyncSession, events: Sequence[TrialChangeEvent]) -> None:
    """Upsert a catalogue row per study the events name. A study with a stored record keeps the
    record's facts (versions > 0): a record is the source, an event's block a summary of one."""
    latest: dict[str, TrialChangeEvent] = {}
    for event in events:
        latest[event.nct_id] = event  # one row per study per statement (PostgreSQL insists)
    if not latest:
        return
    now = utcnow()
    rows = []
    for nct_id in sorted(latest):  # one lock order for every writer
        study = latest[nct_id].study
        acronym = getattr(study, "acronym", None)  # an extra field of the reference schema
        rows.append(
            {
                "nct_id": nct_id,
                "versions": 0,
                "brief_title": study.brief_title,
                "short_title": acronym[:SHORT_TITLE_CHARS]
                if isinstance(acronym, str) and acronym.strip()
                else None,
                "overall_status": study.overall_status,
                "why_stopped": study.why_stopped,
                "conditions": list(study.conditions),
                "condition_mesh": [{"id": m.id, "term": m.term} for m in study.condition_mesh],
                "updated_at": now,
            }
        )
    stmt = insert_for(session, Study).values(rows)
    updated = set(rows[0]) - {"nct_id", "versions"}
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["nct_id"],
            set_={name: stmt.excluded[name] for name in updated},
            where=Study.versions == 0,
        )
    )
