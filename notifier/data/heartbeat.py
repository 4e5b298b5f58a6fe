"""Worker heartbeats in Redis: each `notifier worker` keeps a key with a TTL (pid, host, start,
last job); readiness, `notifier stats` and the metrics count the live ones."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis


def _index(queue_name: str) -> str:
    return f"{queue_name}:workers"


def _key(queue_name: str, worker_id: str) -> str:
    return f"{queue_name}:worker:{worker_id}"


@dataclass
class WorkerBeat:
    """What one worker process says about itself, refreshed every TTL / 3."""

    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_at: float = field(default_factory=time.time)
    last_job_at: float | None = None

    async def beat(self, redis: Redis, queue_name: str, ttl: float) -> None:
        """One heartbeat: the detail key (expiring after `ttl`) and its entry in the index,
        scored by when it expires (so readers drop the dead without a SCAN)."""
        expires = time.time() + ttl
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(_key(queue_name, self.worker_id), json.dumps(asdict(self)), px=int(ttl * 1000))
            pipe.zadd(_index(queue_name), {self.worker_id: expires})
            await pipe.execute()

    async def stop(self, redis: Redis, queue_name: str) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(_key(queue_name, self.worker_id))
            pipe.zrem(_index(queue_name), self.worker_id)
            await pipe.execute()


async def alive(redis: Redis, queue_name: str) -> list[dict[str, Any]]:
    """The workers whose heartbeat has not expired, oldest first."""
    index = _index(queue_name)
    await redis.zremrangebyscore(index, "-inf", time.time())
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await redis.zrange(index, 0, -1)]
    if not ids:
        return []
    found = []
    for raw in await redis.mget([_key(queue_name, i) for i in ids]):
        if raw is not None:
            found.append(json.loads(raw))
    return sorted(found, key=lambda beat: beat["started_at"])


def summary(beats: list[dict[str, Any]]) -> dict[str, Any]:
    """For /readyz and `notifier stats`: how many are alive and when one last took a job."""
    last = [b["last_job_at"] for b in beats if b.get("last_job_at")]
    return {
        "alive": len(beats),
        "last_job_at": _iso(max(last)) if last else None,
        "workers": [
            {
                "host": b["host"],
                "pid": b["pid"],
                "started_at": _iso(b["started_at"]),
                "last_job_at": _iso(b["last_job_at"]) if b.get("last_job_at") else None,
            }
            for b in beats
        ],
    }


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
