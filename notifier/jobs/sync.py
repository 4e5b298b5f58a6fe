"""The worker's ClinicalTrials.gov sync (when NOTIFIER_SYNC_INTERVAL is set): `notifier sync
--once` on a schedule, under the same Redis lock, so two workers never sync at once."""

from __future__ import annotations

import logging
from typing import Any

from notifier.jobs.context import resources_of
from notifier.ops.ctgov_client import FetchFailed
from notifier.ops.sync import Options, SyncBusy, sync_once

log = logging.getLogger("notifier.sync")


async def sync_cron(ctx: dict[str, Any]) -> dict[str, Any]:
    """One sync run. Without a stored cursor it starts from today: a worker never imports
    history by itself (`notifier sync --since …` does, see README "First import")."""
    r = resources_of(ctx)
    try:
        summary = await sync_once(r, Options.of(r, start_today_if_new=True))
    except SyncBusy:
        return {"result": "busy"}
    except FetchFailed as exc:
        log.warning("sync stopped, resumes at the next run: %s", exc)
        return {"result": "failed", "error": str(exc)}
    log.info("sync: %s", summary.text().splitlines()[0])
    return {"result": "done", **summary.as_json()}
