"""Foundation: health and readiness, settings validation, migrations match the models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from notifier.__main__ import main
from notifier.data import partitions
from notifier.data.models import Base
from notifier.mailer import SMTPConfig
from notifier.resources import Resources
from notifier.settings import ConfigError, Settings, check_secrets
from tests.conftest import run_worker


async def test_healthz_and_readyz(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert {k: body[k] for k in ("status", "database", "redis", "smtp")} == {
        "status": "ok",
        "database": "ok",
        "redis": "ok",
        "smtp": "ok",
    }
    # No worker runs here: a detail for the operator, not a failure of the web process.
    assert body["workers"] == {"alive": 0, "last_job_at": None, "workers": []}
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert len(resp.headers["X-Request-Id"]) == 32


async def test_unknown_route_is_json_404(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]


@pytest.mark.postgres_only
async def test_migrations_match_models(resources: Resources) -> None:
    def diff(conn: Connection) -> list[Any]:
        opts = {"compare_type": True, "include_name": partitions.compared}
        ctx = MigrationContext.configure(conn, opts=opts)
        return list(compare_metadata(ctx, Base.metadata))

    async with resources.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


def test_production_refuses_short_or_missing_secrets() -> None:
    with pytest.raises(ConfigError, match="NOTIFIER_SECRET_KEYS"):
        check_secrets(Settings(env="production", secret_keys=["short"]))
    with pytest.raises(ConfigError, match="NOTIFIER_ADMIN_TOKEN"):
        check_secrets(Settings(env="production", secret_keys=["x" * 32], event_secrets=["y" * 32]))


def test_dev_generates_throwaway_secrets() -> None:
    settings = check_secrets(Settings(env="dev"))
    assert len(settings.secret_keys[0]) >= 32
    assert len(settings.admin_token) >= 32


def test_lists_come_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_SECRET_KEYS", "old" + "a" * 32 + ", new" + "b" * 32)
    monkeypatch.setenv("NOTIFIER_ALLOWED_ORIGINS", "https://a.example,https://b.example")
    settings = Settings()
    assert settings.secret_keys == ["old" + "a" * 32, "new" + "b" * 32]
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]


def test_cli_reports_missing_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFIER_SECRET_KEYS", raising=False)
    assert main(["web"]) == 2
    assert "NOTIFIER_SECRET_KEYS" in capsys.readouterr().err


def test_cli_reports_missing_redis(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFIER_ENV", "dev")
    monkeypatch.setenv("NOTIFIER_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "Redis not reachable at redis://127.0.0.1:1/0" in err
    assert "NOTIFIER_REDIS_URL" in err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://localhost:1025", ("localhost", 1025, None, False, None)),
        (
            "smtp://u%40x:p%3Aw@relay.example:587?starttls=true",
            ("relay.example", 587, "u@x", False, True),
        ),
        ("smtps://relay.example", ("relay.example", 465, None, True, False)),
    ],
)
def test_smtp_url(url: str, expected: tuple[Any, ...]) -> None:
    cfg = SMTPConfig.from_url(url)
    assert (cfg.host, cfg.port, cfg.username, cfg.use_tls, cfg.start_tls) == expected
    assert "p:w" not in repr(cfg)


async def test_worker_runs_in_burst_mode(resources: Resources) -> None:
    await resources.redis.enqueue_job("purge_pending")
    worker = await run_worker(resources)
    assert worker.jobs_complete == 1


async def test_the_worker_outlives_a_redis_drop_while_it_starts_a_job(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py raises WatchError when the connection drops inside arq's WATCH/MULTI, which
    ended the worker (found by the fault suite's Redis restart): the slot is given back and the
    job starts at the next poll."""
    from redis.asyncio.client import Pipeline
    from redis.exceptions import WatchError

    from notifier.worker import build_worker

    await resources.redis.enqueue_job("purge_pending")
    (job_id,) = await resources.redis.zrange(resources.settings.queue_name, 0, -1)
    worker = build_worker(resources.settings, resources, burst=True, handle_signals=False)
    real_zscore = Pipeline.zscore
    dropped = 0

    async def drop_once(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        nonlocal dropped
        if not dropped:
            dropped += 1  # what redis-py raises for a connection lost while watching
            raise WatchError("A ConnectionError occurred on while watching one or more keys")
        return await real_zscore(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "zscore", drop_once)
    free = worker.sem._value
    worker._pool = resources.redis  # arq's own start_jobs, on the resources' connection pool
    await worker.start_jobs([job_id])  # arq's pipeline, after its WATCH
    assert (dropped, worker.job_counter, worker.sem._value) == (1, 0, free)
    worker._pool = None
    await worker.main()  # burst: runs the queued job, then stops
    assert worker.jobs_complete == 1
    await worker.close()


@pytest.mark.postgres_only
@pytest.mark.parametrize("dependency", ["redis", "database"])
async def test_readyz_follows_an_outage_without_restart(
    settings: Settings, dependency: str
) -> None:
    """Cut Redis or PostgreSQL off behind a proxy: 503 within 2 s, then 200 once it is back."""
    from urllib.parse import urlsplit

    from aiohttp.test_utils import TestServer

    from notifier.app import create_app
    from notifier.resources import open_resources
    from tests.proxy import TcpProxy

    url = settings.redis_url if dependency == "redis" else settings.database_url
    target = urlsplit(url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 0)
    await proxy.start()
    proxied = url.replace(f":{target.port}/", f":{proxy.port}/")
    key = "redis_url" if dependency == "redis" else "database_url"
    cut_settings = settings.model_copy(update={key: proxied})
    loop = asyncio.get_running_loop()
    try:
        async with (
            open_resources(cut_settings) as r,
            TestClient(TestServer(create_app(cut_settings, r))) as c,
        ):
            assert (await c.get("/readyz")).status == 200
            await proxy.stop()
            start = loop.time()
            resp = await c.get("/readyz")
            assert resp.status == 503
            assert loop.time() - start < 2
            assert (await resp.json())[dependency].startswith("down")
            await proxy.start()
            for _ in range(20):
                if (await c.get("/readyz")).status == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await c.get("/readyz")).status == 200
    finally:
        await proxy.stop()


@pytest.mark.parametrize(
    "mail_from",
    ["Trial alerts alerts@example.org", "alerts", "<>", "Trial alerts <a lerts@example.org>"],
)
def test_a_sender_address_that_cannot_go_on_the_wire_is_refused_at_start_up(
    mail_from: str,
) -> None:
    """Caught here, not by every message being refused by the relay (or by aiosmtplib)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mail_from"):
        Settings(env="dev", mail_from=mail_from)
    assert Settings(env="dev", mail_from="Trial alerts <alerts@example.org>").mail_from


def test_send_batches_shrink_under_a_low_send_rate() -> None:
    """A worker's batches share NOTIFIER_SEND_RATE: each must end well within the job timeout."""
    from notifier.queue import BATCH_SECONDS, batch_size

    assert batch_size(Settings(env="dev")) == 500  # no rate: as configured
    assert batch_size(Settings(env="dev", send_rate=100)) == 500
    slow = Settings(env="dev", send_rate=5, worker_max_jobs=8)
    assert batch_size(slow) == 75
    assert batch_size(slow) * slow.worker_max_jobs / slow.send_rate <= BATCH_SECONDS
    assert batch_size(Settings(env="dev", send_rate=0.01)) == 1
