"""`make run` as a person uses it: `notifier dev` in one shell, `notifier stats` and
`notifier send-test` in another; readable console lines; a warning when SMTP is not there."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REDIS, REDIS_DB
from tests.smtp_server import RecordingSMTP
from tests.test_browser import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def person_env(cwd: Path, smtp_url: str) -> dict[str, str]:
    """A shell with nothing of notifier's set but where its services are (a test Redis DB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        NOTIFIER_REDIS_URL=f"{REDIS}/{REDIS_DB}",
        NOTIFIER_SMTP_URL=smtp_url,
        NOTIFIER_QUEUE_NAME=f"notifier-dev-{uuid.uuid4().hex[:8]}",
        NOTIFIER_WORKER_METRICS_BIND="",
        PYTHONPATH=str(ROOT),
    )
    return env


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def command(cwd: Path, env: dict[str, str], *args: str) -> Ran:
    """One command in a second shell (asyncio: the test's SMTP server keeps serving)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return Ran(proc.returncode or 0, out.decode(), err.decode())


class Dev:
    def __init__(self, proc: asyncio.subprocess.Process, base: str) -> None:
        self.proc, self.base, self.lines = proc, base, []  # type: ignore[var-annotated]
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode().rstrip("\n"))

    @property
    def console(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, pattern: str, seconds: float = 30) -> re.Match[str]:
        for _ in range(int(seconds * 10)):
            if found := re.search(pattern, self.console):
                return found
            await asyncio.sleep(0.1)
        raise AssertionError(f"{pattern!r} never in the console:\n{self.console}")


@asynccontextmanager
async def dev(cwd: Path, env: dict[str, str]) -> AsyncIterator[Dev]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier", "dev", "--port", str(port), cwd=cwd, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    running = Dev(proc, f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with suppress(aiohttp.ClientError):
                    async with http.get(f"{running.base}/healthz") as resp:
                        if resp.status == 200:
                            break
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.1)
        assert proc.returncode is None, running.console
        yield running
    finally:
        if proc.returncode is None:
            proc.terminate()
            with suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 20)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await running.reader


async def test_make_run_then_stats_and_send_test_in_a_second_shell(
    tmp_path: Path, smtp: RecordingSMTP
) -> None:
    env = person_env(tmp_path, smtp.url)
    async with dev(tmp_path, env) as first:
        event_secret = (await first.wait_for(r"NOTIFIER_EVENT_SECRETS=(\S+)")).group(1)
        admin_token = (await first.wait_for(r"NOTIFIER_ADMIN_TOKEN=(\S+)")).group(1)
        assert "wrote NOTIFIER_SECRET_KEYS" in first.console
        dotenv = tmp_path / ".env"
        assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600
        assert f"NOTIFIER_EVENT_SECRETS={event_secret}" in dotenv.read_text()

        # A second shell, the same folder: what the README shows.
        stats = await command(tmp_path, env, "stats")
        assert stats.code == 0, stats.err
        assert "subscribers" in stats.out
        sent = await command(tmp_path, env, "send-test", "ada@example.org")
        assert sent.code == 0, sent.err + sent.out
        assert sent.out.startswith("sent: ")
        assert len(smtp.to("ada@example.org")) == 1

        # The admin token printed at start is the running server's.
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {admin_token}"}
            async with http.get(f"{first.base}/v1/admin/suppressions", headers=headers) as r:
                assert r.status == 200
            # Readable console lines: the confirmation mail of a signup, sent.
            form = {"email": "bob@example.org", "study": "NCT05879978"}
            async with http.post(f"{first.base}/v1/subscriptions", json=form) as r:
                assert r.status == 202
        line = await first.wait_for(
            r"\d\d:\d\d:\d\d INFO +mail sent: confirmation link to subscriber \d+ "
        )
        assert line
        assert '{"ts"' not in first.console  # no JSON lines in dev

    # A restart reuses the secrets: what was printed stays valid.
    async with dev(tmp_path, env) as second:
        assert (await second.wait_for(r"NOTIFIER_EVENT_SECRETS=(\S+)")).group(1) == event_secret
        assert (await second.wait_for(r"NOTIFIER_ADMIN_TOKEN=(\S+)")).group(1) == admin_token
        assert "secrets from .env" in second.console


async def test_stats_needs_no_secret_and_send_test_says_where_they_are(
    tmp_path: Path, smtp: RecordingSMTP
) -> None:
    env = person_env(tmp_path, smtp.url)
    env["NOTIFIER_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/n.db"
    assert (await command(tmp_path, env, "migrate")).code == 0
    stats = await command(tmp_path, env, "stats")
    assert stats.code == 0, stats.err
    assert "subscribers     0" in stats.out
    refused = await command(tmp_path, env, "send-test", "ada@example.org")
    assert refused.code == 2
    assert "Traceback" not in refused.err
    assert "from the folder where `make run` wrote .env" in refused.err


async def test_an_unreachable_relay_is_warned_at_start_and_shown_in_readyz(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    env = person_env(tmp_path, f"smtp://127.0.0.1:{closed}")
    async with dev(tmp_path, env) as running:
        await running.wait_for(rf"WARNING +SMTP relay 127\.0\.0\.1:{closed} not reachable")
        async with aiohttp.ClientSession() as http, http.get(f"{running.base}/readyz") as r:
            assert r.status == 200  # SMTP is a detail: signups and events still work
            body = await r.json()
    assert body["smtp"].startswith("unreachable: ")
    assert (body["database"], body["redis"]) == ("ok", "ok")
