"""The soak's stack: a private PostgreSQL cluster and redis-server it may restart, the SMTP sink
process, `notifier web` and two `notifier worker`s (tests/faults/harness.py's process handling)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.baselines import wait_port
from tests.faults.conftest import Stack as FaultStack
from tests.faults.harness import RedisServer, Service, free_port, service_env

PG_BIN = Path(os.environ.get("NOTIFIER_SOAK_PG_BIN", "/usr/lib/postgresql/15/bin"))


def pg_bin() -> Path:
    """The PostgreSQL server binaries: NOTIFIER_SOAK_PG_BIN, else Debian's newest."""
    if (PG_BIN / "initdb").exists():
        return PG_BIN
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    if not versions:
        sys.exit("the soak needs PostgreSQL's server binaries (apt-get install postgresql)")
    return versions[-1].parent


@dataclass
class PgCluster:
    """A throw-away cluster (initdb, trust auth on loopback) that the soak can restart; the
    machine's shared cluster is never touched. initdb refuses root: as root it runs as
    `postgres`."""

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="soak-pg-")))

    def _run(self, *args: str) -> None:
        command = [str(pg_bin() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -k {self.root}"
        (self.data / "soak.opts").write_text(options)

    def start(self) -> None:
        options = (self.data / "soak.opts").read_text()
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Stack(FaultStack):
    """The fault suite's web + worker, with as many workers as asked (each logs to a file)."""

    workers: int = 2
    worker_services: list[Service] = field(default_factory=list)

    async def start(self) -> None:
        for i in range(self.workers):
            await self.start_numbered_worker(i)
        await self.start_web()

    async def start_numbered_worker(self, i: int) -> None:
        worker = self._service(f"worker{i + 1}", ["worker"])
        await worker.start()
        if i < len(self.worker_services):
            self.worker_services[i] = worker
        else:
            self.worker_services.append(worker)

    async def kill_worker(self, i: int) -> None:
        await self.worker_services[i].signal(signal.SIGKILL)

    def pids(self) -> dict[str, int]:
        out = {}
        for service in [self.web, *self.worker_services]:
            if service is not None and service.process is not None:
                out[service.name] = service.process.pid
        return out

    async def stop(self) -> None:
        for service in [*self.worker_services, self.web]:
            if service is not None:
                try:
                    await service.stop()
                except (TimeoutError, ProcessLookupError):
                    if service.process is not None:
                        service.process.kill()


@dataclass
class SmtpSink:
    """bench/soak_sink.py in its own process, so receiving mail never slows the load."""

    log: Path
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.soak_sink", str(self.port), str(self.log)
        )
        await wait_port(self.port, 30)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


def soak_env(database_url: str, redis: RedisServer, smtp: SmtpSink, queue: str) -> dict[str, str]:
    """The fault suite's settings (short retry ladder, sweep every second or two), with clients
    behind a trusted proxy so signups come from many addresses, as on a real site."""
    env = service_env(database_url, redis.url, smtp.url, queue)
    env.update(
        {
            "NOTIFIER_TRUSTED_PROXIES": "127.0.0.1",
            "NOTIFIER_SWEEP_INTERVAL": "2",
            "NOTIFIER_SWEEP_STALE_AFTER": "10",
            "NOTIFIER_FANOUT_PAGE_SIZE": "1000",
            "NOTIFIER_LOG_LEVEL": "WARNING",
        }
    )
    return env
