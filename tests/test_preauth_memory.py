"""Hostile testing, round two (issue 18, finding 2): a signed route costs an unauthenticated
client no server memory. The signature header is checked before the body is read, large bodies
are read a few at a time and never held before their HMAC is proven, and a slow body is cut off.

The memory test runs a real `notifier web` process and reads its resident set size from /proc:
24 connections each send 8 MiB under a bogus signature, then under a well-formed but wrong one
(which has to be read to be refuted); the process must end within 50 MB of where it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from notifier.metrics import REGISTRY
from notifier.resources import Resources
from tests.faults.harness import Service, free_port, service_env, wait_ready

MIB = 1024 * 1024
ATTACK_BODY = 8 * MIB
CONNECTIONS = 24
PIECE = b"x" * (64 * 1024)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fresh_bogus_signature() -> str:
    """Well-formed, current timestamp: passes every check that needs no body."""
    return f"t={int(time.time())},v1={'ab' * 32}"


async def send_large_body(port: int, signature: str, size: int = ATTACK_BODY) -> bytes:
    """Headers, then as much of `size` bytes as the server takes, then the answer (if any)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Notifier-Signature: {signature}\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    try:
        for _ in range(size // len(PIECE)):
            writer.write(PIECE)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 30)
    except (ConnectionError, TimeoutError):
        answer = b""  # the server hung up on the rest of the body: what we want
    writer.close()
    with contextlib.suppress(ConnectionError):  # a reset from the server is expected
        await writer.wait_closed()
    return answer


@pytest.mark.slow
async def test_24_connections_of_8_mib_leave_the_web_process_at_its_baseline(
    resources: Resources, tmp_path: Path
) -> None:
    s = resources.settings
    port = free_port()
    env = {
        **service_env(s.database_url, s.redis_url, s.smtp_url, s.queue_name),
        "NOTIFIER_BODY_TIMEOUT": "10",
    }
    web = Service("web", ["web", "--port", str(port)], env, tmp_path / "web.log")
    await web.start()
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        assert web.process is not None
        pid = web.process.pid
        # Warm up: one of each answer, so imports and pools are not counted as growth.
        for signature in ("t=1,v1=00", fresh_bogus_signature()):
            await send_large_body(port, signature, size=256 * 1024)
        before = rss_bytes(pid)
        answers: list[bytes] = []
        for signature in ("t=1,v1=bogus", fresh_bogus_signature()):
            answers += await asyncio.gather(
                *(send_large_body(port, signature) for _ in range(CONNECTIONS))
            )
        await asyncio.sleep(0.5)
        grown = rss_bytes(pid) - before
        assert web.process.returncode is None, web.tail()
    finally:
        await web.stop()
    statuses = {a.split(b" ", 2)[1] for a in answers if a.startswith(b"HTTP/1.1")}
    assert statuses <= {b"401", b"503"}, statuses
    assert b"401" in statuses
    assert grown < 50 * MIB, f"the web process grew by {grown / MIB:.0f} MB"


# --- in process: the order of the checks, the gate, the timeout -----------------------------


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"body_timeout": 1.0, "large_bodies_at_once": 1}


def _unauthorized() -> float:
    value = REGISTRY.get_sample_value(
        "notifier_events_total", {"result": "unauthorized", "source": "http"}
    )
    return value or 0.0


async def test_a_bogus_signature_is_refused_before_the_body_arrives(
    client: TestClient[Any, Any],
) -> None:
    """The body is never sent: the 401 comes from the header alone."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Notifier-Signature: t=1,v1=bogus\r\nContent-Length: 8388608\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 401"), answer


async def test_a_body_of_one_byte_is_cut_off_within_the_timeout(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    timeout = resources.settings.body_timeout
    reader, writer = await asyncio.open_connection(client.host, client.port)
    started = time.monotonic()
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Notifier-Signature: {fresh_bogus_signature()}\r\n".encode()
        + b"Content-Length: 8388608\r\n\r\n{"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout * 10)  # returns once closed
    elapsed = time.monotonic() - started
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert elapsed < timeout * 5, elapsed


async def test_large_bodies_beyond_the_gate_wait_then_get_503(
    client: TestClient[Any, Any],
) -> None:
    """One place (large_bodies_at_once=1): a second large body waits for it (half the body
    timeout at most), and gets a 503 with Retry-After when the first does not leave in time."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Notifier-Signature: {fresh_bogus_signature()}\r\n".encode()
        + b"Content-Length: 1000000\r\n\r\n{"
    )  # holds the place until its timeout
    await writer.drain()
    await asyncio.sleep(0.1)
    second = await client.post(
        "/v1/events",
        data=b"{" + b" " * (200 * 1024) + b"}",
        headers={"Notifier-Signature": fresh_bogus_signature()},
    )
    writer.close()
    await writer.wait_closed()
    assert second.status == 503, await second.text()
    assert second.headers["Retry-After"]
    assert (await second.json())["error"]
    del reader
