"""Issue 18, finding 12: several `notifier worker` processes on one host start and run side by
side with the default metrics settings, and their heartbeats in Redis tell /readyz (a detail),
`notifier stats` and the metrics how many are alive."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from notifier.resources import Resources
from tests.faults.harness import Service, service_env
from tests.test_metrics import METRICS_AUTH, sample

pytestmark = pytest.mark.slow
TTL = 3.0


async def _alive(client: TestClient[Any, Any]) -> int:
    resp = await client.get("/readyz")
    assert resp.status == 200  # never a failure of the web process
    workers = (await resp.json())["workers"]
    alive: int = workers["alive"]
    return alive


async def _until(client: TestClient[Any, Any], count: int, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await _alive(client) == count:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{await _alive(client)} workers alive, not {count}, after {within} s")


async def test_two_workers_on_one_host_run_side_by_side_and_report_their_heartbeat(
    client: TestClient[Any, Any], resources: Resources, tmp_path: Path
) -> None:
    s = resources.settings
    env = service_env(s.database_url, s.redis_url, s.smtp_url, s.queue_name)
    env.pop("NOTIFIER_WORKER_METRICS_BIND")  # the defaults: 127.0.0.1:9101-9116
    env["NOTIFIER_WORKER_HEARTBEAT_TTL"] = str(TTL)
    env["NOTIFIER_LOG_LEVEL"] = "INFO"
    workers = [Service(f"worker{i}", ["worker"], env, tmp_path / f"w{i}.log") for i in (1, 2)]
    try:
        for worker in workers:
            await worker.start()
        await _until(client, 2, within=60)  # a cold start imports everything
        await asyncio.sleep(TTL)  # a while side by side: both still up, both still beating
        for worker in workers:
            assert worker.process is not None
            assert worker.process.returncode is None, worker.tail()
            assert "Traceback" not in worker.tail(), worker.tail()
        assert await _alive(client) == 2
        text = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
        assert sample(text, "notifier_workers_alive") == 2
        readyz = (await (await client.get("/readyz")).json())["workers"]
        assert {w["pid"] for w in readyz["workers"]} == {
            w.process.pid for w in workers if w.process is not None
        }
        for worker in workers:
            await worker.signal(signal.SIGKILL)  # no goodbye: only the TTL ends the heartbeat
        took = await _until(client, 0, within=TTL * 3)
        assert took <= TTL * 2, took
    finally:
        for worker in workers:
            await worker.stop()


async def test_a_worker_that_stops_cleanly_leaves_at_once(
    client: TestClient[Any, Any], resources: Resources, tmp_path: Path
) -> None:
    s = resources.settings
    env = service_env(s.database_url, s.redis_url, s.smtp_url, s.queue_name)
    env["NOTIFIER_WORKER_HEARTBEAT_TTL"] = "60"
    worker = Service("worker", ["worker"], env, tmp_path / "w.log")
    try:
        await worker.start()
        await _until(client, 1, within=60)
        assert await worker.signal(signal.SIGTERM) == 0
        assert await _alive(client) == 0
    finally:
        await worker.stop()
