"""Which database errors a job waits out: PostgreSQL restarting is one (the soak's finding)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import asyncpg
import pytest
from arq import Retry
from sqlalchemy.exc import DBAPIError

from notifier.data.db import make_engine, make_sessionmaker, transient_db_error
from notifier.jobs.notices import manage_link_request, send_confirmation, send_manage_link
from notifier.resources import Resources


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


@asynccontextmanager
async def database_down(resources: Resources) -> AsyncIterator[Resources]:
    """The same resources with PostgreSQL unreachable ("connection refused")."""
    dead = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        yield replace(resources, engine=dead, sessions=make_sessionmaker(dead))
    finally:
        await dead.dispose()


@pytest.mark.postgres_only
async def test_a_confirmation_job_waits_out_a_database_outage(resources: Resources) -> None:
    # The soak's second finding: a signup answered 202 as PostgreSQL restarted; its confirmation
    # job failed for good on "connection refused" and the mail never came.
    async with database_down(resources) as down:
        with pytest.raises(Retry):
            await send_confirmation({"resources": down, "job_try": 1}, 1)
    # With the database back, the same job runs (subscriber 1 does not exist here: "gone").
    assert await send_confirmation({"resources": resources}, 1) == "gone"


@pytest.mark.postgres_only
async def test_manage_link_jobs_wait_out_a_database_outage(resources: Resources) -> None:
    # The same gap in the manage-link jobs (POST /v1/manage answers 202, then the job looks the
    # address up and mails the link): a database restart lost the link for good.
    async with database_down(resources) as down:
        with pytest.raises(Retry):
            await send_manage_link({"resources": down, "job_try": 1}, 1)
        with pytest.raises(Retry):
            await manage_link_request({"resources": down, "job_try": 2}, "0" * 64, "0" * 64)
    assert await send_manage_link({"resources": resources}, 1) == "skipped"  # no subscriber 1
    assert await manage_link_request({"resources": resources}, "0" * 64, "0" * 64) == (
        "nothing to send"
    )
