"""open_resources(settings): the one composition root shared by web, worker, CLI and tests."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from arq.connections import ArqRedis
from jinja2 import Environment
from limits.aio.storage import RedisStorage
from redis.asyncio.retry import Retry
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from notifier.core.tokens import Tokens
from notifier.data.db import make_engine, make_sessionmaker
from notifier.data.outage import DatabaseOutage
from notifier.data.receipts import ReceiptBook
from notifier.data.sentinel import follow_master, sentinel_master
from notifier.mail.context import MailContext
from notifier.mail.templates import make_environment
from notifier.mailer import Mailer, RelayProbe
from notifier.queue import deserialize, job_id, serialize
from notifier.settings import Settings


class RedisUnavailable(Exception):
    pass


CONNECT_TIMEOUT = 2.0


def redis_client(
    settings: Settings,
    *,
    retry: Retry | None = None,
    retry_on_error: Sequence[type[Exception]] = (),
) -> ArqRedis:
    """An arq pool on NOTIFIER_REDIS_URL: one server, or the master a Sentinel set names.

    Nothing connects yet. Through Sentinel, each connection attempt asks the Sentinels where
    the master is, and follow_master (once a loop runs) moves the pool after a failover."""
    target, tls = settings.redis_target, settings.redis_tls
    options: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry": retry,
        "retry_on_error": list(retry_on_error),
        "encoding": "utf8",  # as arq's create_pool; replies stay bytes
        **(tls.kwargs() if tls else {}),
    }
    if target.sentinels:
        sentinel_options = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": CONNECT_TIMEOUT,  # a hung Sentinel is skipped for the next
            "password": settings.redis_sentinel_password or None,
            **(tls.kwargs() if tls else {}),
        }
        client: ArqRedis = sentinel_master(
            list(target.sentinels), target.master, sentinel_options, options
        )
    elif target.unix_path:
        client = ArqRedis(unix_socket_path=target.unix_path, **options)
    else:
        client = ArqRedis(host=target.host, port=target.port, **options)
    client.job_serializer = serialize
    client.job_deserializer = deserialize
    client.default_queue_name = settings.queue_name
    return client


def redis_missing_message(settings: Settings, exc: BaseException | None = None) -> str:
    why = f" ({type(exc).__name__}: {exc})" if exc is not None and str(exc) else ""
    tls = " (and NOTIFIER_REDIS_TLS_*)" if settings.redis_tls else ""
    return (
        f"Redis not reachable at {settings.redis_target.safe_url}{why}: start redis-server or "
        f"set NOTIFIER_REDIS_URL{tls}"
    )


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: ArqRedis
    limits_storage: RedisStorage
    mailer: Mailer
    templates: Environment
    tokens: Tokens

    outage: DatabaseOutage

    def job_id(self, *parts: object) -> str:
        return job_id(self.settings.queue_name, *parts)

    @cached_property
    def mail(self) -> MailContext:
        """What mail rendering takes: settings, templates and the link builder, no I/O."""
        return MailContext(self.settings, self.templates, self.tokens)

    @cached_property
    def receipts(self) -> ReceiptBook:
        """Accepted messages noted in Redis, so a killed worker's are not sent again."""
        prefix = job_id(self.settings.queue_name, "receipt")
        return ReceiptBook(self.redis, prefix, self.settings.sweep_stale_after)

    @cached_property
    def relay(self) -> RelayProbe:
        """Whether the SMTP relay answers a connect (cached): start-up warning, /readyz."""
        return RelayProbe.of(self.settings.smtp_url)

    def email_hash(self, email: str) -> str:
        """Keyed hash of a normalised address: lets suppression outlive erasure."""
        key = (self.settings.email_hash_key or self.settings.secret_keys[0]).encode()
        return hmac.new(key, email.strip().lower().encode(), hashlib.sha256).hexdigest()


async def connect_redis(settings: Settings) -> ArqRedis:
    """redis_client(settings), once it answers a PING; RedisUnavailable saying why if not."""
    client = redis_client(settings)
    try:
        await client.ping()
    except (TimeoutError, RedisError, OSError) as exc:
        await client.aclose()
        raise RedisUnavailable(redis_missing_message(settings, exc)) from exc
    follow_master(client)
    return client


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    redis = await connect_redis(settings)
    engine = make_engine(settings.database_url)
    # The rate limits share the arq pool: one place that knows TLS and Sentinel (the limits
    # library would read a Sentinel URL's "/master/db" as a master named "masterdb").
    limits_storage = RedisStorage(
        "async+redis://",
        implementation="redispy",
        key_prefix=f"{settings.queue_name}:limits",
        # limits types its options as scalars; redis-py's own Redis(connection_pool=) takes it
        connection_pool=redis.connection_pool,  # type: ignore[arg-type]
    )
    try:
        resources = Resources(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            redis=redis,
            limits_storage=limits_storage,
            mailer=Mailer(settings.smtp_url, timeout=settings.smtp_timeout),
            templates=make_environment(),
            tokens=Tokens(
                settings.secret_keys,
                settings.confirm_max_age,
                id_key=settings.email_hash_key or settings.secret_keys[0],
            ),
            outage=DatabaseOutage(
                redis,
                job_id(settings.queue_name, "database-unreachable"),
                settings.sweep_stale_after,
            ),
        )
        try:
            yield resources
        finally:
            if "receipts" in vars(resources):  # made by the first send batch
                await resources.receipts.close()
    finally:
        await engine.dispose()
        await redis.aclose()  # and the pool the rate limits share
