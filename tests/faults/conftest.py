"""Fixtures of the fault suite: PostgreSQL behind a proxy, a private Redis, the real processes;
and the table of figures printed at the end of the run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from _pytest.terminal import TerminalReporter
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from notifier.resources import Resources
from tests.conftest import make_settings
from tests.faults.harness import (
    RESULTS,
    RedisServer,
    Service,
    free_port,
    reset_database,
    service_env,
    table,
    wait_ready,
)
from tests.proxy import TcpProxy
from tests.smtp_server import RecordingSMTP


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.write_sep("=", "fault suite: every subscriber exactly once?")
        for line in table(RESULTS):
            terminalreporter.write_line(line)


@pytest.fixture
def pg_url(database_urls: dict[str, str]) -> str:
    if "postgres" not in database_urls:
        pytest.skip("the fault suite runs on PostgreSQL")
    return database_urls["postgres"]


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """A direct connection (not through the proxy) for seeding and for checking the outcome."""
    eng = create_async_engine(pg_url)
    await reset_database(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def email_hash(pg_url: str, smtp: RecordingSMTP) -> Callable[[str], str]:
    """The service's keyed address hash, for rows seeded behind its back."""
    holder = cast(Resources, SimpleNamespace(settings=make_settings(pg_url, smtp.url)))
    return lambda email: Resources.email_hash(holder, email)


@pytest.fixture
async def pg_proxy(pg_url: str) -> AsyncIterator[TcpProxy]:
    target = urlsplit(pg_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def private_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    yield server
    await server.stop()


@dataclass
class Stack:
    """`notifier web` and `notifier worker` as an operator runs them, against real services."""

    env: dict[str, str]
    logs: Path
    web_port: int = field(default_factory=free_port)
    web: Service | None = None
    worker: Service | None = None
    started: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def _service(self, name: str, args: list[str]) -> Service:
        self.started += 1
        return Service(name, args, self.env, self.logs / f"{self.started:02d}-{name}.log")

    async def start_web(self) -> Service:
        args = ["web", "--host", "127.0.0.1", "--port", str(self.web_port)]
        self.web = self._service("web", args)
        await self.web.start()
        await wait_ready(self.base_url)
        return self.web

    async def start_worker(self) -> Service:
        self.worker = self._service("worker", ["worker"])
        await self.worker.start()
        return self.worker

    async def stop(self) -> None:
        for service in (self.worker, self.web):
            if service is not None:
                await service.stop()

    def tails(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
            for path in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest,
    pg_url: str,
    engine: AsyncEngine,
    pg_proxy: TcpProxy,
    private_redis: RedisServer,
    smtp: RecordingSMTP,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    proxied = pg_url.replace(
        f"{urlsplit(pg_url).hostname}:{urlsplit(pg_url).port}", f"127.0.0.1:{pg_proxy.port}"
    )
    env = service_env(proxied, private_redis.url, smtp.url, f"faults-{uuid.uuid4().hex[:8]}")
    running = Stack(env=env, logs=tmp_path)
    try:
        yield running
    finally:
        await running.stop()
        report: Any = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(running.tails())  # noqa: T201  # the processes' own account of a failure


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]  # read by the stack fixture
    return report
