"""Which database errors a job waits out: PostgreSQL restarting is one (the soak's finding)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from notifier.data.db import transient_db_error


def wrapped(orig: Exception) -> DBAPIError:
    return DBAPIError("UPDATE deliveries", None, orig)


@pytest.mark.parametrize(
    "orig",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CrashShutdownError("terminating connection due to a crash"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
    ],
)
def test_restart_and_deadlock_are_waited_out(orig: Exception) -> None:
    # Before, "starting up" (57P03) failed a send batch that was waiting to record what it had
    # sent, and the sweep sent those mails again: 285 duplicates in one soak's PostgreSQL restart.
    assert transient_db_error(wrapped(orig))


@pytest.mark.parametrize(
    "orig",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key value"),
        asyncpg.exceptions.UndefinedTableError('relation "deliveries" does not exist'),
    ],
)
def test_data_and_schema_errors_are_not(orig: Exception) -> None:
    assert not transient_db_error(wrapped(orig))
