"""SQLAlchemy 2 models: the database is the source of truth; idempotency lives in unique keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from notifier.clock import utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite has no BIGINT autoincrement: an INTEGER primary key is its rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both dialects (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {  # noqa: RUF012  # read by SQLAlchemy, never mutated
        datetime: UTCDateTime(),
        dict[str, Any]: Json,
        list[Any]: Json,
    }


ACTIVE = text("status = 'confirmed' AND paused = false")


class Subscriber(Base):
    """One email address. The keyed hash survives erasure through the suppression list."""

    __tablename__ = "subscribers"
    # Ids go into signed links: SQLite must never hand an erased row's id to someone else.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Nonce carried by confirm tokens; replaced when a token is used, so each link works once.
    confirm_nonce: Mapped[str | None] = mapped_column(String(32))
    first_confirmed_at: Mapped[datetime | None]
    last_digest_at: Mapped[datetime | None]  # end of the last digest period mailed
    # When a confirmation job last ran for the address, or a signup was refused its mail (the
    # address's limits): a pending subscription requested after it lost its job (the sweep).
    confirm_job_at: Mapped[datetime | None]
    # Unsubscribe and manage links signed before this are refused (revoked on request).
    tokens_revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Subscription(Base):
    """A study or condition someone follows, with the evidence of their consent."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "match_key"),
        Index(
            "ix_subscriptions_active_key",
            "match_key",
            "subscriber_id",
            postgresql_where=ACTIVE,
            sqlite_where=ACTIVE,
        ),
        Index(
            "ix_subscriptions_active_mesh",
            "mesh_id",
            "subscriber_id",
            postgresql_where=text(
                "status = 'confirmed' AND paused = false AND mesh_id IS NOT NULL"
            ),
            sqlite_where=text("status = 'confirmed' AND paused = false AND mesh_id IS NOT NULL"),
        ),
        Index("ix_subscriptions_status_requested_at", "status", "requested_at"),
        {"sqlite_autoincrement": True},  # ids go into signed links: never reused
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # study | condition
    # "study:NCT01234567" or "cond:<normalised text>": what the matcher compares.
    match_key: Mapped[str] = mapped_column(String(260))
    label: Mapped[str] = mapped_column(String(200))  # as shown in mail: NCT id or condition
    mesh_id: Mapped[str | None] = mapped_column(String(10))  # normalised D000000000
    # A fact the study must also have: another descriptor, or "w:<word>" ("EGFR lung cancer").
    requires: Mapped[str | None] = mapped_column(String(64))
    # What the typed text resolved to, shown to the person: [{mesh_id, term, how, text}].
    resolved: Mapped[list[Any] | None]
    # Kept from the API's first version; no longer changes matching (see README, Matching).
    broad: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    frequency: Mapped[str] = mapped_column(String(8), default="instant")
    discreet: Mapped[bool] = mapped_column(Boolean, default=False)
    event_kinds: Mapped[list[Any] | None]  # None: every kind this subscription can get
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    request_ip: Mapped[str | None] = mapped_column(String(64))
    request_user_agent: Mapped[str | None] = mapped_column(String(512))
    request_source: Mapped[str | None] = mapped_column(String(512))
    confirmed_at: Mapped[datetime | None]
    confirm_ip: Mapped[str | None] = mapped_column(String(64))
    confirm_user_agent: Mapped[str | None] = mapped_column(String(512))
    unsubscribed_at: Mapped[datetime | None]
    unsubscribe_reason: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Event(Base):
    """A trial-change event as received; event_id is the pipeline's idempotency key."""

    __tablename__ = "events"
    __table_args__ = (
        # Retention's payload purge: compacted events whose payload is still stored (a month or
        # two of events, not the whole history the hourly run would otherwise read).
        Index(
            "ix_events_payload_due",
            "fanned_out_at",
            postgresql_where=text("compacted_at IS NOT NULL AND payload_purged_at IS NULL"),
            sqlite_where=text("compacted_at IS NOT NULL AND payload_purged_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    nct_id: Mapped[str] = mapped_column(String(11), index=True)
    change_kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    # received -> fanning_out -> fanned_out; "immaterial" when nothing a reader cares about changed.
    status: Mapped[str] = mapped_column(String(16), default="received")
    fanout_cursor: Mapped[int] = mapped_column(BigId, default=0)
    matched: Mapped[int] = mapped_column(Integer, default=0)
    fanned_out_at: Mapped[datetime | None]
    # Retention (jobs.retention): when its delivery rows were folded into event_delivery_counts
    # (a replay is refused from then on), and when its payload was cut to a stub.
    compacted_at: Mapped[datetime | None]
    payload_purged_at: Mapped[datetime | None]


class RejectedEvent(Base):
    """An event that failed validation on the queue path: kept for the operator, never retried."""

    __tablename__ = "rejected_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)


class Delivery(Base):
    """One mail (or digest item) for one subscriber about one event. A fan-out slice's rows are
    written once, with their outcome, after the relay answered (the slice row is the claim
    before: jobs/fanout.py); rows to send later (a retry, `materialise`) before sending.

    On PostgreSQL the table is partitioned by RANGE (event_pk) (migration 0007; data.partitions):
    event ids grow with time, so a partition holds the rows of about a day's events and
    retention drops whole partitions. Its keys must include the partition key, so the table's
    primary key there is (id, event_pk); ids still come from one sequence and stay unique, which
    is what the mapper's `id` identity relies on. SQLite keeps a plain table."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_pk", "subscriber_id"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_subscriber_id_status", "subscriber_id", "status"),
        {"postgresql_partition_by": "RANGE (event_pk)"},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_pk: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    # pending -> sending -> sent | failed | skipped; held: waits for the subscriber's digest.
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500))
    message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class EventDeliveryCount(Base):
    """Delivery rows of an event by status, once retention removed them: the progress endpoint
    and `notifier stats` add these to the rows still stored (written in the transaction that
    deletes the rows, so nothing is counted twice or lost)."""

    __tablename__ = "event_delivery_counts"

    event_pk: Mapped[int] = mapped_column(
        ForeignKey("events.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class FanoutSlice(Base):
    """One run of an event's matching subscribers (after_id < subscriber id <= last_id), written
    by the fan-out; its send job takes it, mails the run and writes each mail's delivery row with
    its outcome (jobs/fanout.py). One durable row per send batch rather than per recipient: a
    slice still pending or sending after the sweep's limit is enqueued again, so a flushed Redis
    or a killed worker loses no recipient."""

    __tablename__ = "fanout_slices"
    __table_args__ = (
        Index("ix_fanout_slices_status_queued_at", "status", "queued_at"),
        Index("ix_fanout_slices_event_pk_status", "event_pk", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_pk: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    after_id: Mapped[int] = mapped_column(BigInteger)
    last_id: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(Integer)  # subscribers the fan-out matched in the run
    # pending -> sending (taken by its job) -> done (every mail of the run has its row).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # The sweep's clock: when queued, or taken (renewed by each write of its batch).
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # times taken


class Suppression(Base):
    """Addresses we must never mail, by keyed hash so that erasure keeps them suppressed."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Bounce(Base):
    """Bounce and complaint reports, counted per address for the soft-bounce rule."""

    __tablename__ = "bounces"
    __table_args__ = (Index("ix_bounces_email_hash_created_at", "email_hash", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # hard | soft | complaint
    detail: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SubscriptionView(Protocol):
    """What matching and rendering read of a subscription: a Subscription, or the plain row
    the send path loads (core.matching.Matched)."""

    @property
    def id(self) -> int: ...
    @property
    def subscriber_id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def match_key(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def mesh_id(self) -> str | None: ...
    @property
    def requires(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def paused(self) -> bool: ...
    @property
    def frequency(self) -> str: ...
    @property
    def discreet(self) -> bool: ...
    @property
    def event_kinds(self) -> list[Any] | None: ...
