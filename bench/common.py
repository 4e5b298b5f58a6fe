"""Shared benchmark plumbing: Postfix smtp-sink and smtp-source, medians, RSS, bench databases."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

PG_ADMIN = os.environ.get("NOTIFIER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("NOTIFIER_BENCH_REDIS", "redis://127.0.0.1:6379/14")
# Queue names (and so arq job ids) unique per run: two runs back to back on one Redis would
# otherwise share ids such as "bench:e2e:fanout:1", and arq refuses a job whose id it still
# keeps a result for: the second run's fan-out waited ~5 minutes for the sweep.
RUN = f"{os.getpid()}-{time.time_ns()}"


def queue_name(benchmark: str) -> str:
    return f"bench:{benchmark}:{RUN}"


ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "tests" / "data" / "studies"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_postfix_tools() -> None:
    missing = [t for t in ("smtp-sink", "smtp-source") if not shutil.which(t)]
    if missing:
        sys.exit(
            f"bench needs Postfix's {' and '.join(missing)}: "
            "apt-get install postfix (Debian), then run again"
        )


_COUNTER = re.compile(rb"mesg=(\d+)")


@dataclass
class Sink:
    """Postfix smtp-sink on a free loopback port; counts messages from its -c counters."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _out: Any = None

    def start(self) -> Sink:
        self._out = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the sink
        args = ["smtp-sink", "-c", "-m", "512"]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        self.proc = subprocess.Popen(
            [*args, f"127.0.0.1:{self.port}", "1024"], stdout=self._out, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError("smtp-sink did not start")

    def received(self) -> int:
        self._out.seek(0, os.SEEK_END)
        size = self._out.tell()
        self._out.seek(max(0, size - 256))
        found = _COUNTER.findall(self._out.read())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


@contextmanager
def sink() -> Iterator[Sink]:
    s = Sink().start()
    try:
        yield s
    finally:
        s.stop()


def smtp_source_rate(port: int, messages: int, size_bytes: int, sessions: int = 8) -> float:
    """The machine's ceiling: C SMTP client to C SMTP sink, messages per second."""
    start = time.perf_counter()
    subprocess.run(
        [
            "smtp-source",
            "-d",
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size_bytes),
            "-f",
            "bench@example.org",
            "-t",
            "rcpt@example.org",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return messages / (time.perf_counter() - start)


def median(values: list[float]) -> float:
    return statistics.median(values)


def _proc_status_mb(field: str, pid: int | None) -> float:
    for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int | None = None) -> float:
    return _proc_status_mb("VmRSS", pid)


def peak_rss_mb(pid: int | None = None) -> float:
    return _proc_status_mb("VmHWM", pid)


@dataclass
class Result:
    name: str
    metric: str
    ours: float
    baseline: float
    baseline_name: str
    target: str
    ok: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")


async def fresh_database(name: str) -> str:
    """(Re)create a PostgreSQL database for a benchmark; returns its SQLAlchemy URL."""
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://")


@dataclass
class Service:
    """`notifier web` and N `notifier worker` processes, logging to one temporary file."""

    port: int
    procs: list[subprocess.Popen[bytes]]
    log: Path

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return self.procs[1:]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


@asynccontextmanager
async def service(env: dict[str, str], workers: int) -> AsyncIterator[Service]:
    """Start web + `workers` workers, wait until web answers and the workers poll; stop them."""
    from bench.baselines import wait_port

    port = free_port()
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    with log.open("wb") as out:
        commands = [["web", "--port", str(port)]] + [["worker"]] * workers
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "notifier", *cmd],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            for cmd in commands
        ]
        try:
            await wait_port(port, 30)
            await asyncio.sleep(2)  # workers connected and polling
            yield Service(port, procs, log)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(20)
    log.unlink()
