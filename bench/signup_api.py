"""signup_api: wrk -c32 posting unique signups to `notifier web` (PostgreSQL, then SQLite),
against an aiohttp no-op POST handler measured in the same run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.baselines import NOOP_APP, wait_port
from bench.common import REDIS_URL, ROOT, Result, free_port, fresh_database, median, queue_name
from bench.seed import migrate

WRK_SCRIPT = r"""
local counter = 0
local threads = {}
function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(os.time() * 1000 + id)
  prefix = string.format("t%d-%d", id, math.random(1, 1000000000))
end
function request()
  counter = counter + 1
  local body = string.format('{"email":"%s-%d@example.org","study":"NCT05879978"}', prefix, counter)
  return wrk.format("POST", "/v1/subscriptions", {["Content-Type"] = "application/json"}, body)
end
"""

LAT = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)", re.M)
RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
SOCKERR = re.compile(r"Socket errors: (.+)")


def run_wrk(url: str, script_text: str, seconds: int, connections: int) -> tuple[float, float, int]:
    """wrk with a Lua script against `url`: requests/s, p99 ms, errors (non-2xx + socket
    errors). Shared by the benchmarks that load an HTTP route."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script_text)
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(script)
    rps = float(RPS.search(out).group(1))  # type: ignore[union-attr]
    value, unit = LAT.search(out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = int(m.group(1)) if (m := NON2XX.search(out)) else 0
    if m := SOCKERR.search(out):
        errors += sum(int(n) for n in re.findall(r"\d+", m.group(1)))
    return rps, p99, errors


def wrk(port: int, seconds: int) -> tuple[float, float, int]:
    """requests/s, p99 ms, errors (non-2xx + socket errors)."""
    return run_wrk(f"http://127.0.0.1:{port}/v1/subscriptions", WRK_SCRIPT, seconds, 32)


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def notifier_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "NOTIFIER_ENV": "production",
        "NOTIFIER_DATABASE_URL": database_url,
        "NOTIFIER_REDIS_URL": REDIS_URL,
        "NOTIFIER_SECRET_KEYS": "s" * 40,
        "NOTIFIER_EVENT_SECRETS": "e" * 40,
        "NOTIFIER_ADMIN_TOKEN": "a" * 40,
        "NOTIFIER_IP_REQUESTS_PER_MINUTE": "100000000",
        "NOTIFIER_QUEUE_NAME": queue_name("signup"),
        "NOTIFIER_LOG_LEVEL": "WARNING",
    }


async def measure(
    database_url: str, seconds: int, runs: int
) -> tuple[list[tuple[float, float, float, int]], bool]:
    """`notifier web` and the no-op app started once each, warmed up, then measured in turns:
    ([(ours/s, p99 ms of ours, baseline/s, errors)], whether the log says "database is locked")."""
    ports = free_port(), free_port()
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    procs = [
        start(
            [sys.executable, "-m", "notifier", "web", "--port", str(ports[0])],
            notifier_env(database_url),
            log,
        ),
        subprocess.Popen([sys.executable, "-c", NOOP_APP, str(ports[1])], cwd=ROOT),
    ]
    measured = []
    try:
        for port in ports:
            await wait_port(port, 20)
            wrk(port, 1)  # warm-up: pools, caches
        for _ in range(runs):
            base, _, _ = wrk(ports[1], seconds)
            rps, p99, errors = wrk(ports[0], seconds)
            measured.append((rps, p99, base, errors))
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    locked = "database is locked" in log.read_text(errors="replace")
    log.unlink()
    return measured, locked


async def run(quick: bool) -> list[Result]:
    if not shutil.which("wrk"):
        sys.exit("signup_api needs wrk: apt-get install wrk")
    seconds = 1 if quick else 10
    pg_url = await fresh_database("notifier_bench_signup")
    migrate(pg_url)
    sqlite_dir = tempfile.mkdtemp(prefix="notifier-bench-")
    sqlite_url = f"sqlite+aiosqlite:///{sqlite_dir}/bench.db"
    migrate(sqlite_url)
    results = []
    for name, url, target in (("postgres", pg_url, 0.10), ("sqlite", sqlite_url, 0.05)):
        measured, locked = await measure(url, seconds, 3)
        ours, p99s, bases = ([m[i] for m in measured] for i in range(3))
        errors = sum(m[3] for m in measured)
        rate, base, p99 = median(ours), median(bases), median(p99s)
        ok = rate >= target * base and errors == 0 and not locked
        if name == "postgres":
            ok = ok and p99 <= 50
        results.append(
            Result(
                f"signup_api/{name}",
                "signups/s (wrk -c32)",
                rate,
                base,
                "aiohttp no-op POST",
                f">= {target:.0%} of baseline, 0 errors"
                + (", p99 <= 50 ms" if name == "postgres" else ", no 'database is locked'"),
                ok,
                {"p99_ms": round(p99, 1), "errors": errors, "database_locked": locked},
            )
        )
    shutil.rmtree(sqlite_dir, ignore_errors=True)
    return results
