"""The SMTP seam against a real MTA's test server: Postfix's smtp-sink, which offers PIPELINING
(and, with -p, does not). Each message names the next recipient, as the send job does; every
message must arrive once, whole, to its own recipient. .ci/run installs Postfix for this."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.mailer import Mailer
from tests.faults.harness import free_port
from tests.test_pipelining import SENDER, send_all

pytestmark = pytest.mark.skipif(
    shutil.which("smtp-sink") is None, reason="Postfix's smtp-sink is not installed"
)


@pytest.fixture(params=[True, False], ids=["smtp-sink", "smtp-sink -p (no PIPELINING)"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, bool]]:
    """smtp-sink dumping every transaction to its own file under tmp_path."""
    port = free_port()
    dumps = tmp_path / "dumps"
    args = ["smtp-sink", "-d", f"{dumps}/%H."]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    if not request.param:
        args.append("-p")
    proc = subprocess.Popen(
        [*args, f"127.0.0.1:{port}", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield f"smtp://127.0.0.1:{port}", dumps, request.param
    finally:
        proc.terminate()
        proc.wait(5)


def message_for(recipient: str) -> bytes:
    # A line starting with a dot (dot-stuffing) and a long body: several TCP segments.
    lines = [f"line {i} for {recipient}" for i in range(300)]
    body = "\r\n".join([f"Subject: for {recipient}", "", ".a dotted line", *lines, "."])
    return body.encode() + b"\r\n"


def received(dumps: Path) -> dict[str, list[str]]:
    """Recipient -> the message texts smtp-sink stored for them (LF line ends, unstuffed)."""
    found: dict[str, list[str]] = {}
    for path in dumps.iterdir():
        text = path.read_text()
        head, _, rest = text.partition("\nReceived: ")
        rcpt = next(line for line in head.splitlines() if line.startswith("X-Rcpt-Args: "))
        # The Received header smtp-sink adds: its first line and two continuation lines.
        message = rest.split("\n", 3)[3]
        found.setdefault(rcpt.removeprefix("X-Rcpt-Args: <").rstrip(">"), []).append(message)
    return found


async def test_every_message_arrives_once_and_whole(sink: tuple[str, Path, bool]) -> None:
    url, dumps, pipelining = sink
    batches = [[f"r{b}-{i}@example.org" for i in range(100)] for b in range(3)]

    async def one_batch(recipients: list[str]) -> None:
        async with Mailer(url, timeout=10).connect() as conn:
            assert (conn._pipelined is not None) is pipelining
            for i, recipient in enumerate(recipients):
                following = recipients[i + 1] if i + 1 < len(recipients) else None
                await conn.send(SENDER, recipient, message_for(recipient), then=following)

    await asyncio.gather(*(one_batch(b) for b in batches))
    await asyncio.sleep(0.2)  # smtp-sink writes its dump files as each transaction ends
    got = received(dumps)
    everyone = [r for b in batches for r in b]
    assert sorted(got) == sorted(everyone)
    for recipient in everyone:
        (text,) = got[recipient]
        assert text.rstrip("\n") == message_for(recipient).decode().replace("\r\n", "\n").rstrip(
            "\n"
        )


async def test_an_envelope_sent_ahead_and_dropped_stores_nothing(
    sink: tuple[str, Path, bool],
) -> None:
    url, dumps, _ = sink
    errors = []
    async with Mailer(url, timeout=10).connect() as conn:
        errors = await send_all(conn, ["first@example.org"])
        await conn.send(
            SENDER, "second@example.org", b"Subject: x\r\n\r\nx\r\n", then="never@x.org"
        )
    await asyncio.sleep(0.2)
    assert errors == [None]
    assert sorted(received(dumps)) == ["first@example.org", "second@example.org"]
