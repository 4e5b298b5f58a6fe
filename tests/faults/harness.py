"""The fault suite's machinery: real `notifier web` / `notifier worker` processes, a private
redis-server to stop, restart and flush, bulk seeding, and the figures each scenario reports."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.clock import utcnow
from notifier.data.models import Base, Delivery, Event, Subscriber, Subscription
from notifier.pipeline import encode, sign
from tests.conftest import ADMIN_TOKEN, EVENT_SECRETS, PUBLIC_URL, SECRET_KEYS, SITE_ORIGIN
from tests.smtp_server import RecordingSMTP

AUDIENCE = 2000
CONDITION_KEY = "cond:sclc"  # matches new_study("NCT05879978") through its condition text
STARTUP_TIMEOUT = 60.0  # a cold `python -m notifier` on a busy 2-core machine takes seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Row:
    """One line of the table the suite prints at the end."""

    fault: str
    expected: int
    received: int
    duplicates: int
    consent_intact: bool
    seconds: float
    note: str = ""


RESULTS: list[Row] = []


def table(rows: list[Row]) -> list[str]:
    head = ("fault", "mails expected", "mails received", "duplicates", "consent intact", "time")
    body = [
        (
            r.fault,
            str(r.expected),
            str(r.received),
            str(r.duplicates) + (f" ({r.note})" if r.note else ""),
            "yes" if r.consent_intact else "NO",
            f"{r.seconds:.1f} s",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [fmt(head), "| " + " | ".join("-" * w for w in widths) + " |", *map(fmt, body)]


# --- a private Redis --------------------------------------------------------------------------


@dataclass
class RedisServer:
    """redis-server without persistence on a port of its own: stopping it loses everything."""

    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()  # no SHUTDOWN SAVE: a crash, and nothing persisted anyway
            await self.process.wait()
        self.process = None


# --- the service's processes ------------------------------------------------------------------


def service_env(database_url: str, redis_url: str, smtp_url: str, queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        {
            "NOTIFIER_ENV": "production",
            "NOTIFIER_DATABASE_URL": database_url,
            "NOTIFIER_REDIS_URL": redis_url,
            "NOTIFIER_SMTP_URL": smtp_url,
            "NOTIFIER_SMTP_TIMEOUT": "5",
            "NOTIFIER_PUBLIC_URL": PUBLIC_URL,
            "NOTIFIER_SECRET_KEYS": ",".join(SECRET_KEYS),
            "NOTIFIER_EVENT_SECRETS": ",".join(EVENT_SECRETS),
            "NOTIFIER_ADMIN_TOKEN": ADMIN_TOKEN,
            "NOTIFIER_ALLOWED_ORIGINS": SITE_ORIGIN,
            "NOTIFIER_MAIL_FROM": "Trial alerts <alerts@notify.example.org>",
            "NOTIFIER_QUEUE_NAME": queue,
            "NOTIFIER_WORKER_METRICS_BIND": "",
            "NOTIFIER_METRICS_BIND": "",
            "NOTIFIER_LOG_LEVEL": "WARNING",
            "NOTIFIER_FANOUT_PAGE_SIZE": "200",
            "NOTIFIER_SEND_BATCH_SIZE": "50",
            "NOTIFIER_WORKER_MAX_JOBS": "4",
            "NOTIFIER_RETRY_LADDER": "0.2,0.5,1",
            "NOTIFIER_SWEEP_INTERVAL": "1",
            "NOTIFIER_SWEEP_STALE_AFTER": "3",
            "NOTIFIER_SHUTDOWN_GRACE": "10",
        }
    )
    return env


@dataclass
class Service:
    """One `python -m notifier …` process, its stderr kept in a file for the failure report."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "notifier",
                *self.args,
                env=self.env,
                stdout=out,
                stderr=out,
            )

    async def signal(self, sig: signal.Signals, *, wait: float = 30.0) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), wait)
        self.process = None
        return code

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.signal(signal.SIGTERM)
        self.process = None

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def wait_ready(base_url: str, within: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{base_url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready after {within} s")


async def post_event(http: aiohttp.ClientSession, base_url: str, event: dict[str, Any]) -> Any:
    body = encode([event])
    headers = {
        "Notifier-Signature": sign(body, EVENT_SECRETS[0]),
        "Content-Type": "application/json",
    }
    async with http.post(f"{base_url}/v1/events", data=body, headers=headers) as resp:
        if resp.status != 202:
            raise AssertionError(f"POST /v1/events: {resp.status} {await resp.text()}")
        return await resp.json()


# --- the database: seed, snapshot, count ------------------------------------------------------


async def reset_database(engine: AsyncEngine) -> None:
    tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


async def seed_audience(engine: AsyncEngine, email_hash: Any, n: int = AUDIENCE) -> None:
    """n confirmed subscribers of one condition, with consent evidence, in two bulk INSERTs."""
    now = utcnow()
    async with engine.begin() as conn:
        ids = (
            await conn.execute(
                insert(Subscriber).returning(Subscriber.id),
                [
                    {
                        "email": audience_address(i),
                        "email_hash": email_hash(audience_address(i)),
                        "timezone": "UTC",
                        "first_confirmed_at": now,
                        "created_at": now,
                    }
                    for i in range(n)
                ],
            )
        ).scalars()
        await conn.execute(
            insert(Subscription),
            [
                {
                    "subscriber_id": sid,
                    "kind": "condition",
                    "match_key": CONDITION_KEY,
                    "label": "SCLC",
                    "broad": False,
                    "status": "confirmed",
                    "paused": False,
                    "frequency": "instant",
                    "discreet": False,
                    "requested_at": now,
                    "request_ip": f"198.51.100.{sid % 250}",
                    "request_user_agent": "Mozilla/5.0 (fault suite)",
                    "request_source": "https://trials.example.org/conditions/sclc",
                    "confirmed_at": now,
                    "confirm_ip": f"203.0.113.{sid % 250}",
                    "confirm_user_agent": "Mozilla/5.0 (fault suite, confirm)",
                    "updated_at": now,
                }
                for sid in ids
            ],
        )


CONSENT_COLUMNS = (
    Subscription.id,
    Subscription.subscriber_id,
    Subscription.match_key,
    Subscription.status,
    Subscription.requested_at,
    Subscription.request_ip,
    Subscription.request_user_agent,
    Subscription.request_source,
    Subscription.confirmed_at,
    Subscription.confirm_ip,
    Subscription.confirm_user_agent,
)


async def consent_snapshot(engine: AsyncEngine) -> set[tuple[Any, ...]]:
    """Every subscription with its evidence of consent (who asked, from where, when confirmed)."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(*CONSENT_COLUMNS))
        return {tuple(row) for row in rows}


async def delivery_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        return {row[0]: int(row[1]) for row in rows}


async def event_status(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        status: str | None = await conn.scalar(select(Event.status))
        return status


def audience_address(i: int) -> str:
    return f"f{i:05d}@example.org"


AUDIENCE_ADDRESSES = frozenset(audience_address(i) for i in range(AUDIENCE))


def per_address(smtp: RecordingSMTP) -> Counter[str]:
    """Alerts received per subscriber of the audience (confirmation mails of signups left out)."""
    return Counter(m.rcpt_to for m in smtp.messages if m.rcpt_to in AUDIENCE_ADDRESSES)


async def wait_until(
    predicate: Any, *, within: float, interval: float = 0.05, what: str = "condition"
) -> float:
    """Poll an async predicate (the event loop stays free for the in-process SMTP server)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what} not reached within {within} s")


async def wait_all_sent(engine: AsyncEngine, smtp: RecordingSMTP, n: int, within: float) -> None:
    async def done() -> bool:
        if len(per_address(smtp)) < n:
            return False
        counts = await delivery_counts(engine)
        return counts.get("sent", 0) == n and await event_status(engine) == "fanned_out"

    await wait_until(done, within=within, interval=0.2, what=f"{n} deliveries sent")
