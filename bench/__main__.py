"""`python -m bench [--quick] [--only NAME ...]`: run the benchmarks, print ours vs baseline."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Result, require_postfix_tools

BENCHES = [
    "send_path",
    "match_scan",
    "fanout_scheduling",
    "fanout_e2e",
    "signup_api",
    "rate_limit",
    "vocabulary",
    "studies_ingest",
    "retention",
]
RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}"
    )


def table(results: list[Result]) -> str:
    head = (
        f"{'benchmark':<18} {'metric':<34} {'ours':>12} {'baseline':>12} {'ratio':>7}"
        "  ok  baseline / target"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.name:<18} {r.metric[:34]:<34} {r.ours:>12,.1f} {r.baseline:>12,.1f} "
            f"{r.ratio:>7.3f}  {'yes' if r.ok else 'NO ':<3} {r.baseline_name} / {r.target}"
        )
        if r.extra:
            lines.append(" " * 19 + ", ".join(f"{k}={v}" for k, v in r.extra.items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 2 minutes")
    parser.add_argument("--only", nargs="*", choices=BENCHES, default=None)
    args = parser.parse_args()
    require_postfix_tools()
    chosen = args.only or BENCHES
    results: list[Result] = []
    started = time.time()
    for name in chosen:
        module = importlib.import_module(f"bench.{name}")
        t0 = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        results.extend(asyncio.run(module.run(args.quick)))
        print(f"   {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print(f"machine: {machine()}")
    print(
        f"mode: {'quick' if args.quick else 'full'}, median of 3 runs each, "
        f"{time.time() - started:.0f} s in all\n"
    )
    print(table(results))
    RESULTS.mkdir(exist_ok=True)
    payload: dict[str, Any] = {
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "results": [{**r.__dict__, "ratio": r.ratio} for r in results],
    }
    out = RESULTS / f"latest-{payload['mode']}.json"
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nsaved {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
