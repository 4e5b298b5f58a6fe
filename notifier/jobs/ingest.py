"""The documented queue path for a sync pipeline inside the trusted network: the arq job that
validates, stores and deduplicates one event exactly as POST /v1/events does."""

from __future__ import annotations

import json
import logging
from typing import Any

from notifier.clock import utcnow
from notifier.core.events import EventsInvalid, ingest, parse_events
from notifier.data.models import RejectedEvent
from notifier.jobs.context import resources_of
from notifier.jobs.retry import retry_if_database_unreachable
from notifier.metrics import EVENTS

log = logging.getLogger("notifier.events")

REJECTED_PAYLOAD_MAX = 100_000  # characters kept of a rejected payload, for the operator


async def ingest_trial_event(ctx: dict[str, Any], event: Any) -> dict[str, Any]:
    """The documented queue path: validate, store and deduplicate exactly as POST /v1/events.

    An invalid event is recorded in rejected_events and the job returns normally: retrying
    cannot fix it, and a failing job would be retried by arq.
    """
    r = resources_of(ctx)
    try:
        if not isinstance(event, dict) or ("events" in event and "event_id" not in event):
            raise EventsInvalid("invalid event", {"event": "must be one event object"})
        (valid,) = parse_events(event)  # the very checks POST /v1/events makes
    except EventsInvalid as exc:
        error = "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
        try:
            async with r.sessions.begin() as session:
                session.add(
                    RejectedEvent(
                        source="queue",
                        error=error[:10_000],
                        # json.dumps escapes U+0000, which PostgreSQL cannot store as text.
                        payload=json.dumps(event, default=str)[:REJECTED_PAYLOAD_MAX],
                        received_at=utcnow(),
                    )
                )
        except Exception as db_exc:
            retry_if_database_unreachable(db_exc, ctx, "queued event")
            raise
        EVENTS.labels("rejected", "queue").inc()
        log.warning("queued event rejected: %s", error[:500])
        return {"result": "rejected", "error": error}
    try:
        stored = await ingest(r, [valid], "queue")
    except Exception as exc:
        retry_if_database_unreachable(exc, ctx, "queued event")
        raise
    if stored.new_pks:
        return {"result": "accepted", "event_pk": stored.new_pks[0]}
    return {"result": "duplicate"}
