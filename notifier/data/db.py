"""Engine and session factory for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers work during a write; busy_timeout waits instead of "locked".
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        # Every connection is kept: the pool closes overflow connections as they come back, so
        # under load transactions kept paying for new ones (one in ten, 32 concurrent signups).
        max_overflow=0,
        pool_pre_ping=True,  # survive a PostgreSQL restart without restarting the process
        pool_timeout=5,
        connect_args={"timeout": 5, "command_timeout": 60},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# Serialization failure, deadlock; and PostgreSQL going down or coming back (class 57: an admin
# or crash shutdown cut the session, "the database system is starting up" during recovery),
# which asyncpg reports as a plain database error, not a connection one.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})


def transient_db_error(exc: BaseException) -> bool:
    """The database is unreachable, restarting, or chose this transaction as a deadlock victim:
    trying again later can succeed (unlike a constraint or data error)."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        return (
            isinstance(exc, OperationalError | InterfaceError)
            or exc.connection_invalidated
            or sqlstate in TRANSIENT_SQLSTATES
        )
    return isinstance(exc, PoolTimeout | OSError)
