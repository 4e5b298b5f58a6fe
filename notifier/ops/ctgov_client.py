"""The ClinicalTrials.gov API v2 client of `notifier sync`: pages of studies changed since a day,
with retries (exponential backoff, jitter, Retry-After) on 429, 5xx and network errors."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from notifier import __version__

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("notifier.sync")

STUDIES_PATH = "/api/v2/studies"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 300.0  # seconds; a longer Retry-After is capped (the run can be resumed)


class FetchFailed(Exception):
    """The API kept failing, or refused the request (4xx other than 429): the run stops, the
    cursor stays where the last stored page left it."""


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0  # seconds before the first retry (doubled each time, up to cap)
    cap: float = 60.0
    attempts: int = 8  # tries of one page in all

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter over the exponential step (attempt 1 is the first retry); a server's
        Retry-After is honoured as a minimum."""
        step = min(self.cap, self.base * 2 ** (attempt - 1))
        wait = random.uniform(step / 2, step)  # jitter, not cryptography
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
        return wait


@dataclass
class Page:
    studies: list[Any]
    next_token: str | None
    total: int | None


def query_params(since: date, page_size: int, token: str | None) -> dict[str, str]:
    """Studies whose LastUpdatePostDate is on or after `since`, oldest change first, so that
    every later page holds only later (or equal) dates: a cursor taken from a stored page
    never skips a record of a page not yet fetched."""
    params = {
        "format": "json",
        "query.term": f"AREA[LastUpdatePostDate]RANGE[{since.isoformat()},MAX]",
        "sort": "LastUpdatePostDate:asc",
        "pageSize": str(page_size),
    }
    if token:
        params["pageToken"] = token
    else:
        params["countTotal"] = "true"
    return params


async def pages(
    base_url: str,
    since: date,
    page_size: int,
    backoff: Backoff,
    *,
    on_retry: Callable[[str], None] | None = None,
    request_seconds: float = 60.0,
) -> AsyncIterator[Page]:
    """Every page of the query, fetched one after another (the next once the caller is done
    with the previous one: a crash between pages loses nothing stored)."""
    import aiohttp  # here: the worker loads this module for its cron, and aiohttp's client is
    # ~8 MB of a worker's memory when sync is off (issue 20: RSS unchanged)

    headers = {"User-Agent": f"notifier-sync/{__version__}", "Accept": "application/json"}
    client_timeout = aiohttp.ClientTimeout(total=request_seconds)
    async with aiohttp.ClientSession(headers=headers, timeout=client_timeout) as http:
        token: str | None = None
        while True:
            params = query_params(since, page_size, token)
            data = await _fetch(
                http, base_url.rstrip("/") + STUDIES_PATH, params, backoff, on_retry
            )
            studies = data.get("studies")
            if not isinstance(studies, list):
                raise FetchFailed("answer has no 'studies' list")
            next_token = data.get("nextPageToken")
            total = data.get("totalCount")
            yield Page(
                studies,
                next_token if isinstance(next_token, str) and next_token else None,
                total if isinstance(total, int) else None,
            )
            if not isinstance(next_token, str) or not next_token:
                return
            token = next_token


async def _fetch(
    http: aiohttp.ClientSession,
    url: str,
    params: dict[str, str],
    backoff: Backoff,
    on_retry: Callable[[str], None] | None,
) -> dict[str, Any]:
    import aiohttp

    for attempt in range(1, backoff.attempts + 1):
        retry_after: float | None = None
        try:
            async with http.get(url, params=params) as resp:
                if resp.status == 200:
                    data = await resp.json(content_type=None)
                    if isinstance(data, dict):
                        return data
                    problem = "answer is not a JSON object"
                elif resp.status in RETRY_STATUSES:
                    problem = f"HTTP {resp.status}"
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                else:
                    text = (await resp.text(errors="replace"))[:200]
                    raise FetchFailed(f"HTTP {resp.status} from {url}: {text}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"[:200]
        if attempt == backoff.attempts:
            raise FetchFailed(f"{problem}, {attempt} attempts: giving up (the run can resume)")
        wait = backoff.delay(attempt, retry_after)
        message = f"{problem}; retry {attempt} in {wait:.1f} s"
        log.warning("ClinicalTrials.gov: %s", message)
        if on_retry is not None:
            on_retry(message)
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def parse_retry_after(value: str | None) -> float | None:
    """Seconds, or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
