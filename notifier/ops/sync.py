"""`notifier sync`: pull changed study records from ClinicalTrials.gov and store them as
POST /v1/studies does, incrementally from a cursor kept in the database.

Each page is one transaction: its records, their derived events, the records it had to reject
(rejected_events, source "sync") and the advanced cursor commit together, so a crash resumes
from the last stored page. The cursor is the newest LastUpdatePostDate stored; each run asks
from the cursor minus NOTIFIER_SYNC_OVERLAP_DAYS (records posted late for a day already seen
are fetched again, and come back "unchanged"). A malformed record is rejected, reported and
skipped: the cursor moves past it, since fetching it again cannot fix it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncSession

from notifier.clock import utcnow
from notifier.core.ctgov import RecordError, StudyRecord, parse_record
from notifier.core.events import enqueue_fanouts
from notifier.core.studies import Policy, store_records
from notifier.data.models import RejectedEvent
from notifier.data.study_tables import SyncState
from notifier.metrics import EVENTS
from notifier.ops.ctgov_client import Backoff, FetchFailed, pages
from notifier.resources import Resources

log = logging.getLogger("notifier.sync")

CURSOR = "ctgov"
LOCK_SECONDS = 600  # renewed with every page; a dead syncer's lock lapses after this
REJECTED_PAYLOAD_MAX = 100_000


class SyncBusy(Exception):
    """Another process (a worker's cron, an operator's `notifier sync`) is syncing now."""


class NoCursor(Exception):
    """First run: nothing tells where to start."""


@dataclass
class Options:
    base_url: str
    page_size: int
    overlap_days: int
    versions_kept: int
    new_study_window_days: int
    since: date | None = None  # overrides the stored cursor (a first import, a re-sync)
    start_today_if_new: bool = False  # the worker's cron: no history on its own
    alerts: bool = True  # False: store records, derive no events (bootstrap)
    backoff: Backoff = field(default_factory=Backoff)

    @classmethod
    def of(cls, r: Resources, **overrides: Any) -> Options:
        s = r.settings
        values: dict[str, Any] = {
            "base_url": s.sync_base_url,
            "page_size": s.sync_page_size,
            "overlap_days": s.sync_overlap_days,
            "versions_kept": s.study_versions_kept,
            "new_study_window_days": s.new_study_window_days,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Summary:
    started_from: str = ""
    cursor_before: str | None = None
    cursor_after: str | None = None
    pages: int = 0
    fetched: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    stale: int = 0
    events: int = 0
    retries: int = 0
    rejected: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [
            f"synced {self.fetched} records in {self.pages} pages ({self.seconds:.1f} s) "
            f"from {self.started_from}: {self.new} new, {self.changed} changed, "
            f"{self.unchanged} unchanged, {self.stale} stale, {len(self.rejected)} rejected; "
            f"{self.events} events; {self.retries} retries",
            f"cursor {self.cursor_before or '(none)'} -> {self.cursor_after or '(none)'}",
        ]
        lines += [f"  rejected {reason}" for reason in self.rejected[:20]]
        if len(self.rejected) > 20:
            lines.append(f"  … and {len(self.rejected) - 20} more (table rejected_events)")
        return "\n".join(lines)


class Progress:
    """One updating line on a terminal (stderr), nothing when it is not one."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None

    def show(self, summary: Summary, total: int | None) -> None:
        if self.stream is None:
            return
        of = f"/{total:,}" if total is not None else ""
        self.stream.write(
            f"\rpage {summary.pages} · {summary.fetched:,}{of} records · {summary.new} new, "
            f"{summary.changed} changed, {len(summary.rejected)} rejected   "
        )
        self.stream.flush()

    def note(self, message: str) -> None:
        if self.stream is not None:
            self.stream.write(f"\n{message}\n")
            self.stream.flush()

    def done(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


async def sync_once(r: Resources, opts: Options, progress: Progress | None = None) -> Summary:
    """One run to the end of the query, under a Redis lock (SyncBusy when someone else syncs)."""
    lock = r.redis.lock(r.job_id("sync-lock"), timeout=LOCK_SECONDS, blocking=False)
    if not await lock.acquire():
        raise SyncBusy("another sync is running")
    try:
        return await _run(r, opts, progress or Progress(None), lock)
    finally:
        try:
            await lock.release()
        except Exception:  # lapsed or Redis gone: it expires by itself
            log.warning("sync lock already released")


async def _run(r: Resources, opts: Options, progress: Progress, lock: Any) -> Summary:
    started = time.perf_counter()
    summary = Summary()
    async with r.sessions() as session:
        state = await session.get(SyncState, CURSOR)
        summary.cursor_before = state.cursor if state is not None else None
    if opts.since is not None:
        since = opts.since
    elif summary.cursor_before is not None:
        since = date.fromisoformat(summary.cursor_before) - timedelta(days=opts.overlap_days)
    elif opts.start_today_if_new:
        since = utcnow().date()
    else:
        raise NoCursor("no sync cursor stored yet: give --since YYYY-MM-DD for the first run")
    summary.started_from = since.isoformat()
    summary.cursor_after = summary.cursor_before
    policy = Policy(opts.versions_kept, opts.new_study_window_days, opts.alerts)

    def on_retry(message: str) -> None:
        summary.retries += 1
        progress.note(message)

    async for page in pages(opts.base_url, since, opts.page_size, opts.backoff, on_retry=on_retry):
        records, rejected = _parse(page.studies)
        newest = max((rec.last_update_post.date for rec in records), default=None)
        async with r.sessions.begin() as session:
            ingested = await store_records(session, records, policy, today=utcnow().date())
            for reason, payload in rejected:
                session.add(
                    RejectedEvent(
                        source="sync",
                        error=reason[:10_000],
                        payload=payload[:REJECTED_PAYLOAD_MAX],
                        received_at=utcnow(),
                    )
                )
            summary.cursor_after = await _advance(session, newest, summary.cursor_after)
        await enqueue_fanouts(r, ingested.stored.new_pks)
        if ingested.stored.new_pks:
            EVENTS.labels("accepted", "sync").inc(len(ingested.stored.new_pks))
        await lock.reacquire()
        summary.pages += 1
        summary.fetched += len(page.studies)
        for name, n in ingested.counts().items():
            setattr(summary, name, getattr(summary, name) + n)
        summary.events += len(ingested.stored.new_pks)
        summary.rejected += [reason for reason, _ in rejected]
        progress.show(summary, page.total)
    progress.done()
    summary.seconds = round(time.perf_counter() - started, 3)
    async with r.sessions.begin() as session:
        state = await session.get(SyncState, CURSOR)
        if state is not None:
            state.last_run = summary.as_json()
    return summary


def _parse(items: list[Any]) -> tuple[list[StudyRecord], list[tuple[str, str]]]:
    records: list[StudyRecord] = []
    rejected: list[tuple[str, str]] = []
    for item in items:
        try:
            records.append(parse_record(item))
        except RecordError as exc:
            try:
                nct = item["protocolSection"]["identificationModule"]["nctId"]
            except (KeyError, TypeError):
                nct = "?"
            reason = f"{str(nct)[:20]}: {exc}"
            log.warning("sync: record rejected: %s", reason)
            rejected.append((reason, json.dumps(item, default=str)))
    return records, rejected


async def _advance(session: AsyncSession, newest: str | None, current: str | None) -> str | None:
    """The cursor moves forward only, to the newest LastUpdatePostDate the page stored."""
    if newest is None or (current is not None and newest <= current):
        return current
    state = await session.get(SyncState, CURSOR, with_for_update=True)
    if state is None:
        session.add(SyncState(name=CURSOR, cursor=newest, updated_at=utcnow()))
    else:
        state.cursor = max(state.cursor, newest)
        state.updated_at = utcnow()
        newest = state.cursor
    return newest


async def sync_command(
    r: Resources,
    opts: Options,
    *,
    once: bool,
    interval: float,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """`notifier sync`: one run (--once) or runs every `interval` seconds until interrupted."""
    status = 0
    while True:
        try:
            summary = await sync_once(r, opts, Progress(err))
            out.write(summary.text() + "\n")
            out.flush()
            status = 0
        except (SyncBusy, NoCursor, FetchFailed) as exc:
            err.write(f"notifier sync: {exc}\n")
            status = 1 if not isinstance(exc, NoCursor) else 2
            if isinstance(exc, NoCursor):
                return status
        if once:
            return status
        opts.since = None  # only the first run starts from --since; then from the cursor
        await asyncio.sleep(interval)
