"""Liveness and readiness: /readyz checks the database and Redis, each within a short timeout."""

from __future__ import annotations

import asyncio

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import text

from notifier.data import heartbeat
from notifier.handlers.middleware import res

OPENAPI_PATHS = {
    "/healthz": {"get": {"summary": "Process alive", "responses": {"200": {"description": "ok"}}}},
    "/readyz": {
        "get": {
            "summary": "Database and Redis (a master) reachable; the SMTP relay and workers alive"
            " as details",
            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
        }
    },
}

CHECK_TIMEOUT = 1.5


class ReadOnlyReplica(Exception):
    """Redis answers, as a replica: every write (a job, a rate-limit count) would fail."""

    def __str__(self) -> str:
        return "a read-only replica (writes fail): NOTIFIER_REDIS_URL names no master"


async def redis_is_master(client: Redis) -> None:
    """Redis answers and takes writes: ROLE says master (a plain server is one). A server that
    does not know ROLE (some managed services rename it) is taken at its PING."""
    try:
        role = await client.role()
    except ResponseError:
        await client.ping()
        return
    kind = role[0] if isinstance(role, list | tuple) and role else role
    if (kind.decode() if isinstance(kind, bytes) else str(kind)) != "master":
        raise ReadOnlyReplica


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    r = res(request)

    async def database() -> None:
        async with r.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await redis_is_master(r.redis)

    checks = {"database": database, "redis": redis}
    results = await asyncio.gather(
        *(asyncio.wait_for(check(), CHECK_TIMEOUT) for check in checks.values()),
        return_exceptions=True,
    )
    status = {
        name: "ok"
        if not isinstance(result, BaseException)
        else f"down: {result}"
        if isinstance(result, ReadOnlyReplica)
        else f"down: {type(result).__name__}"
        for name, result in zip(checks, results, strict=True)
    }
    ok = all(v == "ok" for v in status.values())
    body: dict[str, object] = {"status": "ok" if ok else "unavailable", **status}
    # Details, never a failure of this process: mail waits for the relay, signups and events
    # do not; with no worker alive the web still answers, but confirmations and alerts are not
    # going out, and the operator should see it here.
    relay = await r.relay.problem()
    body["smtp"] = "ok" if relay is None else f"unreachable: {relay}"
    body["workers"] = "unknown"
    if status["redis"] == "ok":
        try:
            beats = await asyncio.wait_for(
                heartbeat.alive(r.redis, r.settings.queue_name), CHECK_TIMEOUT
            )
            body["workers"] = heartbeat.summary(beats)
        except (TimeoutError, RedisError, OSError):
            pass  # "unknown"
    return web.json_response(body, status=200 if ok else 503)
