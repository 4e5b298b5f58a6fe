"""open_resources(settings): the one composition root shared by web, worker, CLI and tests."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from jinja2 import Environment
from limits.aio.storage import RedisStorage
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from notifier.core.tokens import Tokens
from notifier.data.db import make_engine, make_sessionmaker
from notifier.data.outage import DatabaseOutage
from notifier.data.receipts import ReceiptBook
from notifier.mail.context import MailContext
from notifier.mail.templates import make_environment
from notifier.mailer import Mailer, RelayProbe
from notifier.queue import deserialize, job_id, serialize
from notifier.settings import Settings

log = logging.getLogger("notifier.resources")


class RedisUnavailable(Exception):
    pass


def redis_settings(settings: Settings, *, retries: int = 0) -> RedisSettings:
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_timeout = 2
    rs.conn_retries = retries
    return rs


def redis_missing_message(settings: Settings) -> str:
    return (
        f"Redis not reachable at {settings.redis_url}: start redis-server or set NOTIFIER_REDIS_URL"
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
        prefix = job_id(self.settings.queue_name, "accepted")
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
    try:
        return await create_pool(
            redis_settings(settings),
            default_queue_name=settings.queue_name,
            job_serializer=serialize,
            job_deserializer=deserialize,
        )
    except (TimeoutError, RedisError, OSError) as exc:
        raise RedisUnavailable(redis_missing_message(settings)) from exc


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    redis = await connect_redis(settings)
    engine = make_engine(settings.database_url)
    limits_storage = RedisStorage(
        settings.redis_url, implementation="redispy", key_prefix=f"{settings.queue_name}:limits"
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
        await redis.aclose()
        await close_limits(limits_storage)


async def close_limits(storage: RedisStorage) -> None:
    """The limits library opens its own redis-py client (lazily) and has no close of its own."""
    bridge: Any = getattr(storage, "bridge", None)  # the redis-py bridge, typed as its base
    if bridge is not None:
        try:
            await bridge.get_connection().aclose()
        except (RedisError, OSError, AttributeError):
            log.debug("rate-limit Redis client already closed")
