"""studies_ingest: what POST /v1/studies and `notifier sync` do to each record (validate, snapshot,
diff against the stored version, catalogue, sites, derived events), in batches of 100 on
PostgreSQL, against parsing the same JSON alone, in the same run; and the bytes a stored version
costs (compressed snapshot, and the table with its indexes and TOAST)."""

from __future__ import annotations

import json
import time
from datetime import date
from typing import Any

from sqlalchemy import text

from bench.common import STUDIES, Result, fresh_database, median
from bench.seed import migrate
from notifier.core.ctgov import parse_record
from notifier.core.studies import Policy, store_records
from notifier.data.db import make_engine, make_sessionmaker

BATCH = 100  # records per transaction, as a POST of NOTIFIER_MAX_STUDY_BATCH
TODAY = date(2026, 1, 1)


def make_bodies(n: int) -> list[bytes]:
    """n distinct records (the real ones, renumbered) as the JSON text the API sends."""
    base = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(STUDIES.glob("NCT*.json"))]
    bodies = []
    for i in range(n):
        rec = json.loads(json.dumps(base[i % len(base)]))
        ident = rec["protocolSection"]["identificationModule"]
        ident["nctId"] = f"NCT{90_000_000 + i:08d}"
        ident["briefTitle"] = f"{ident['briefTitle']} ({i})"
        bodies.append(json.dumps(rec).encode())
    return bodies


def next_version(body: bytes) -> bytes:
    """The record's next CT.gov version: a new status and a later update date."""
    rec: dict[str, Any] = json.loads(body)
    status = rec["protocolSection"]["statusModule"]
    status["overallStatus"] = "COMPLETED" if status["overallStatus"] != "COMPLETED" else "UNKNOWN"
    status["lastUpdateSubmitDate"] = "2025-12-30"
    status["lastUpdatePostDateStruct"] = {"date": "2025-12-31", "type": "ACTUAL"}
    return json.dumps(rec).encode()


def parse_only(bodies: list[bytes]) -> float:
    start = time.perf_counter()
    for body in bodies:
        json.loads(body)
    return time.perf_counter() - start


async def ingest(url: str, bodies: list[bytes]) -> tuple[float, int]:
    """Seconds to ingest every body (JSON parse included), and the events derived."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    policy = Policy(versions_kept=5, new_study_window_days=30)
    async with engine.connect() as conn:  # warm the pool: time the work, not the handshake
        await conn.exec_driver_sql("SELECT 1")
    events = 0
    start = time.perf_counter()
    for offset in range(0, len(bodies), BATCH):
        records = [parse_record(json.loads(b)) for b in bodies[offset : offset + BATCH]]
        async with sessions.begin() as session:
            done = await store_records(session, records, policy, today=TODAY)
        events += len(done.stored.new_pks)
    elapsed = time.perf_counter() - start
    await engine.dispose()
    return elapsed, events


async def storage(url: str) -> tuple[float, float, int]:
    """Average compressed snapshot bytes, table bytes per version (indexes, TOAST), versions."""
    engine = make_engine(url)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT avg(octet_length(snapshot)), "
                    "pg_total_relation_size('study_versions'), count(*) FROM study_versions"
                )
            )
        ).one()
    await engine.dispose()
    avg, total, count = float(row[0]), int(row[1]), int(row[2])
    return avg, total / count, count


async def run(quick: bool) -> list[Result]:
    n = 10_000
    runs = 1 if quick else 3
    bodies = make_bodies(n)
    changed = [next_version(b) for b in bodies]
    base_rates, first_rates, next_rates = [], [], []
    events = 0
    avg_snapshot = per_version = 0.0
    for _ in range(runs):
        url = await fresh_database("notifier_bench_studies")
        migrate(url)
        base_rates.append(n / parse_only(bodies))
        seconds, _ = await ingest(url, bodies)
        first_rates.append(n / seconds)
        seconds, events = await ingest(url, changed)
        next_rates.append(n / seconds)
        avg_snapshot, per_version, _ = await storage(url)
    base = median(base_rates)
    first, second = median(first_rates), median(next_rates)
    storage_ok = avg_snapshot <= 4096
    return [
        Result(
            "studies_ingest",
            f"records/s, first import of {n:,}",
            first,
            base,
            "json.loads of the same records",
            ">= 150 records/s; snapshot <= 4 KB a version",
            first >= 150 and storage_ok,
            {
                "snapshot_bytes": round(avg_snapshot),
                "table_bytes_per_version": round(per_version),
            },
        ),
        Result(
            "studies_ingest",
            f"records/s, next version of {n:,}",
            second,
            base,
            "json.loads of the same records",
            ">= 100 records/s (diff, an event each)",
            second >= 100,
            {"events": events},
        ),
    ]
