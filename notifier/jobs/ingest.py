"""The documented queue path for a sync pipeline inside the trusted network: the arq job that
validates, stores and deduplicates one event exactly as POST /v1/events does."""

from __future__ import annotations

import json
import logging
from typing import Any

from arq import Retry

from notifier.clock import utcnow
from notifier.core.events import EventsInvalid, ingest, parse_events
from notifier.data.db import transient_db_error
from notifier.data.models import RejectedEvent
from notifier.jobs.context import resources_of
from notifier.metrics import EVENTS

log = logging.getLogger("notifier.events")

REJECTED_PAYLOAD_MAX = 100_000  # characters kept of a rejected payload, for the operator


def _retry_if_database_unreachable(exc: Exception, ctx: dict[str, Any]) -> None:
    """arq re-runs a job only when it raises Retry: an event handed to the queue must survive a
    database outage, so wait for it (1, 2, 4 … 60 s) instead of failing for good."""
    if transient_db_error(exc):
        tries = int(ctx.get("job_try", 1))
        log.warning("database unreachable, queued event retried (try %d)", tries)
        raise Retry(defer=min(60, 2 ** (tries - 1))) from exc


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
            _retry_if_database_unreachable(db_exc, ctx)
            raise
        EVENTS.labels("rejected", "queue").inc()
        log.warning("queued event rejected: %s", error[:500])
        return {"result": "rejected", "error": error}
    try:
        stored = await ingest(r, [valid], "queue")
    except Exception as exc:
        _retry_if_database_unreachable(exc, ctx)
        raise
    if stored.new_pks:
        return {"result": "accepted", "event_pk": stored.new_pks[0]}
    return {"result": "duplicate"}
