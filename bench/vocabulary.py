"""vocabulary: resolve 10,000 typed conditions (what signup does for each), and GET
/v1/conditions under wrk -c100 against an aiohttp no-op GET route measured in the same run."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.baselines import wait_port
from bench.common import ROOT, Result, free_port, median
from bench.signup_api import notifier_env, run_wrk, start
from notifier.core.concepts import concept_of
from notifier.core.normalize import normalize_condition
from notifier.core.vocabulary import vocabulary

NOOP_GET_APP = """
import sys
from aiohttp import web
async def noop(request):
    return web.json_response({"conditions": []}, headers={"Cache-Control": "public"})
app = web.Application()
app.router.add_get("/v1/conditions", noop)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

QUERIES = [
    "lung canc", "heart att", "nsclc", "breast cancer", "leukaem", "myeloma", "diabet",
    "neuroendocrine tum", "asthma", "copd", "multiple scl", "parkins", "alzheim", "melanoma",
    "hypercholest", "depress", "macular oed", "bladder ca", "stomach", "zzqx junk",
]  # fmt: skip

_LUA_QUERIES = ", ".join('"' + q.replace(" ", "%20") + '"' for q in QUERIES)
WRK_SCRIPT = (
    "local queries = {" + _LUA_QUERIES + "}\n"
    "local n = 0\n"
    "function request()\n"
    "  n = n + 1\n"
    "  local q = queries[(n % #queries) + 1]\n"
    '  return wrk.format("GET", "/v1/conditions?limit=8&q=" .. q)\n'
    "end\n"
)


def typed_conditions(count: int) -> list[str]:
    """What people type: labels, names and entry terms of real descriptors, in varied case and
    spelling, plus the labelled set's subscriptions and some junk."""
    v = vocabulary()
    rng = random.Random(15)
    uis = sorted(v._descriptors)
    out: list[str] = []
    while len(out) < count:
        descriptor = v.descriptor(rng.choice(uis))
        if descriptor is None:
            continue
        term = rng.choice(descriptor.terms)
        choice = rng.random()
        if choice < 0.3:
            term = term.lower()
        elif choice < 0.4:
            term = term.replace("tumor", "tumour").replace("emia", "aemia")
        elif choice < 0.45:
            term = "xq" + term[::-1]
        out.append(term[:200])
    return out


def resolve_rate(texts: list[str]) -> tuple[float, float]:
    """(typed conditions resolved per second, the old text keying per second) on the same texts."""
    start_at = time.perf_counter()
    for text in texts:
        concept_of(text)
    ours = len(texts) / (time.perf_counter() - start_at)
    start_at = time.perf_counter()
    for text in texts:
        normalize_condition(text)
    base = len(texts) / (time.perf_counter() - start_at)
    return ours, base


def wrk(port: int, seconds: int) -> tuple[float, float, int]:
    return run_wrk(f"http://127.0.0.1:{port}/v1/conditions", WRK_SCRIPT, seconds, 100)


async def suggestions(seconds: int, runs: int) -> list[tuple[float, float, float, int, float]]:
    ports = free_port(), free_port()
    tmp = tempfile.TemporaryDirectory(prefix="bench-vocab-")
    log = Path(tmp.name) / "web.log"
    env = notifier_env(f"sqlite+aiosqlite:///{tmp.name}/bench.db")
    procs = [
        start([sys.executable, "-m", "notifier", "web", "--port", str(ports[0])], env, log),
        subprocess.Popen([sys.executable, "-c", NOOP_GET_APP, str(ports[1])], cwd=ROOT),
    ]
    measured = []
    try:
        for port in ports:
            await wait_port(port, 20)
            wrk(port, 1)  # warm-up: the vocabulary, the suggestion cache
        for _ in range(runs):
            base, base_p99, _ = wrk(ports[1], seconds)
            rps, p99, errors = wrk(ports[0], seconds)
            measured.append((rps, p99, base, errors, base_p99))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        tmp.cleanup()
    return measured


async def run(quick: bool) -> list[Result]:
    texts = typed_conditions(10_000)
    vocabulary()  # loaded once per process, as in the web app: not part of the rate
    ours, base = resolve_rate(texts)
    results = [
        Result(
            "vocabulary_resolve",
            "typed conditions resolved/s (10,000)",
            ours,
            base,
            "normalize_condition (the old text key)",
            "10,000 in under 2 s (>= 5,000/s)",
            ours >= 5_000,
        )
    ]
    if not shutil.which("wrk"):
        sys.exit("vocabulary needs wrk: apt-get install wrk")
    measured = await suggestions(3 if quick else 10, 3)
    rate, p99, noop = (median([m[i] for m in measured]) for i in range(3))
    noop_p99 = median([m[4] for m in measured])
    errors = sum(m[3] for m in measured)
    results.append(
        Result(
            "conditions_api",
            "GET /v1/conditions/s (wrk -c100)",
            rate,
            noop,
            "aiohttp no-op GET route",
            "p99 < 20 ms at 100 connections, no errors",
            p99 < 20 and errors == 0,
            {"p99_ms": round(p99, 1), "noop_p99_ms": round(noop_p99, 1), "errors": errors},
        )
    )
    return results
