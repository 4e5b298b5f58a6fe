"""Fixtures on real services: PostgreSQL and SQLite (migrated once), Redis, aiosmtpd, HTTP.

Each test session gets its own PostgreSQL database and SQLite file, so parallel runs do not
collide; Redis uses its own DB index (NOTIFIER_TEST_REDIS_DB) and a per-session queue name.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.app import create_app
from notifier.data.migrate import upgrade
from notifier.data.models import Base
from notifier.data.partitions import SPAN
from notifier.handlers.protocol import NotifierRunner
from notifier.resources import Resources, open_resources
from notifier.settings import Settings
from notifier.worker import build_worker
from tests.smtp_server import RecordingSMTP

PG_ADMIN = os.environ.get("NOTIFIER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("NOTIFIER_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("NOTIFIER_TEST_REDIS_DB", "15"))
BACKENDS = [b for b in os.environ.get("NOTIFIER_TEST_BACKENDS", "postgres,sqlite").split(",") if b]
RUN_ID = uuid.uuid4().hex[:8]
# `notifier dev` writes ./.env and every command reads it: a developer's own must not reach the
# commands the tests run (tests/test_dev_mode.py sets its own).
os.environ["NOTIFIER_ENV_FILE"] = ""

SECRET_KEYS = ["k1-" + "a" * 40, "k2-" + "b" * 40]
EVENT_SECRETS = ["ev-" + "c" * 40]
ADMIN_TOKEN = "admin-" + "d" * 40
PUBLIC_URL = "https://notify.example.org"
SITE_ORIGIN = "https://trials.example.org"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def database_urls() -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    pg_name = f"notifier_test_{RUN_ID}"
    tmpdir = tempfile.TemporaryDirectory(prefix="notifier-test-")
    if "postgres" in BACKENDS:
        import asyncio

        async def create() -> None:
            conn = await asyncpg.connect(PG_ADMIN)
            try:
                await conn.execute(f'CREATE DATABASE "{pg_name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        urls["postgres"] = f"{base}/{pg_name}"
    if "sqlite" in BACKENDS:
        urls["sqlite"] = f"sqlite+aiosqlite:///{tmpdir.name}/notifier.db"
    for url in urls.values():
        upgrade(url)
    yield urls
    if "postgres" in urls:
        import asyncio

        async def drop() -> None:
            conn = await asyncpg.connect(PG_ADMIN)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop())
    tmpdir.cleanup()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name != "postgres" and request.node.get_closest_marker("postgres_only"):
        pytest.skip("PostgreSQL only")
    return name


@pytest.fixture
def db_url(backend: str, database_urls: dict[str, str]) -> str:
    return database_urls[backend]


@pytest.fixture
async def smtp() -> AsyncIterator[RecordingSMTP]:
    server = RecordingSMTP()
    await server.start()
    yield server
    await server.stop()


def make_settings(db_url: str, smtp_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "production",
        "database_url": db_url,
        "redis_url": f"{REDIS}/{REDIS_DB}",
        "smtp_url": smtp_url,
        "smtp_timeout": 5.0,
        "public_url": PUBLIC_URL,
        "secret_keys": SECRET_KEYS,
        "event_secrets": EVENT_SECRETS,
        "admin_token": ADMIN_TOKEN,
        "mail_from": "Trial alerts <alerts@notify.example.org>",
        "allowed_origins": [SITE_ORIGIN],
        "queue_name": f"notifier-test-{RUN_ID}",
        "retry_ladder": [0.05, 0.1, 0.2],
        "sweep_stale_after": 60.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change settings for its tests."""
    return {}


@pytest.fixture
def settings(db_url: str, smtp: RecordingSMTP, settings_overrides: dict[str, Any]) -> Settings:
    return make_settings(db_url, smtp.url, **settings_overrides)


async def reset_state(resources: Resources) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    async with resources.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            await reset_partitions(conn)
        else:
            for table in tables:
                await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608  # our own names
    await resources.redis.flushdb()


CANONICAL_PARTITIONS = [("deliveries_e1", "FOR VALUES FROM (MINVALUE) TO ('1000000001')")]


async def reset_partitions(conn: AsyncConnection) -> None:
    """One partition of deliveries for event ids from 1 (they restart there), whatever a test
    rolled or dropped before."""
    rows = await conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'deliveries'::regclass"
            " ORDER BY 1"
        )
    )
    found = [tuple(row) for row in rows]
    if found == CANONICAL_PARTITIONS:
        return
    for name, _ in found:
        await conn.execute(text(f"DROP TABLE {name}"))
    await conn.execute(
        text(
            "CREATE TABLE deliveries_e1 PARTITION OF deliveries"
            f" FOR VALUES FROM (MINVALUE) TO ({1 + SPAN})"
        )
    )


@pytest.fixture
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(settings) as opened:
        await reset_state(opened)
        yield opened


class NotifierTestServer(TestServer):
    """The test server with the production runner (notifier.handlers.protocol)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return NotifierRunner(self.app, **kwargs)


@pytest.fixture
async def client(resources: Resources) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(resources.settings, resources)
    async with TestClient(NotifierTestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


async def run_worker(resources: Resources, *, allow_failures: bool = False) -> Worker:
    """Run the real arq worker in burst mode until no job is due.

    arq's burst mode stops when the queue is empty *while* a job is still running, so jobs that
    job enqueues (a fan-out's send batches) would be left behind: run bursts until none is due.
    """
    failed = complete = 0
    while True:
        worker = build_worker(resources.settings, resources, burst=True, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()
        failed += worker.jobs_failed
        complete += worker.jobs_complete
        due = await resources.redis.zcount(resources.settings.queue_name, 0, time.time() * 1000)
        if not due:
            break
    if not allow_failures:
        assert failed == 0, f"{failed} job(s) failed"
    worker.jobs_failed, worker.jobs_complete = failed, complete  # totals over the bursts
    return worker
