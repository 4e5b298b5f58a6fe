"""The study catalogue: what the service knows of each trial, its record versions and its sites.

A `studies` row exists for every NCT id the service has heard of, from a record (POST
/v1/studies, `notifier sync`) or from an event's `study` block; `versions` > 0 means a record
is stored, and then the record's fields win over any event's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from notifier.clock import utcnow
from notifier.data.models import Base, BigId


class Study(Base):
    """One trial as pages and mails name it; the row is also the lock that serialises the
    ingestion of its records (SELECT … FOR UPDATE), so one change is derived once."""

    __tablename__ = "studies"

    nct_id: Mapped[str] = mapped_column(String(11), primary_key=True)
    brief_title: Mapped[str] = mapped_column(Text)
    short_title: Mapped[str | None] = mapped_column(Text)  # the acronym, when CT.gov has one
    overall_status: Mapped[str | None] = mapped_column(String(40))
    why_stopped: Mapped[str | None] = mapped_column(Text)
    conditions: Mapped[list[Any]] = mapped_column(default=list)
    condition_mesh: Mapped[list[Any]] = mapped_column(default=list)  # [{id, term}]
    first_posted: Mapped[str | None] = mapped_column(String(10))  # yyyy-mm-dd
    last_update_posted: Mapped[str | None] = mapped_column(String(10))
    # Of the latest stored record version; None while the study is known from events only.
    version_key: Mapped[str | None] = mapped_column(String(40))
    fingerprint: Mapped[str | None] = mapped_column(String(64))  # study_diff.material_fingerprint
    versions: Mapped[int] = mapped_column(Integer, default=0)  # record versions ever stored
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class StudyVersion(Base):
    """One stored record version: zlib of its canonical JSON (core.ctgov.snapshot_bytes). The
    newest NOTIFIER_STUDY_VERSIONS_KEPT of a study are kept; seq is unique per study, so two
    concurrent ingestions of one study can never both store "the next" version."""

    __tablename__ = "study_versions"
    __table_args__ = (
        UniqueConstraint("nct_id", "seq"),
        # Retention's daily pass over the versions past NOTIFIER_STUDY_VERSION_RETENTION_DAYS.
        Index("ix_study_versions_stored_at_id", "stored_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    nct_id: Mapped[str] = mapped_column(ForeignKey("studies.nct_id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    version_key: Mapped[str] = mapped_column(String(40))
    snapshot: Mapped[bytes] = mapped_column(LargeBinary)
    stored_at: Mapped[datetime] = mapped_column(default=utcnow)


class StudySite(Base):
    """A study's locations as its latest record lists them (replaced with each new version).

    (latitude, longitude) is a plain B-tree on both dialects: "sites within r km of a point"
    is a bounding box (a latitude range served by the index, longitude filtered on the rows it
    finds), then the exact distance in Python (data.study_queries.sites_within)."""

    __tablename__ = "study_sites"
    __table_args__ = (
        Index("ix_study_sites_latitude_longitude", "latitude", "longitude"),
        Index("ix_study_sites_nct_id", "nct_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    nct_id: Mapped[str] = mapped_column(ForeignKey("studies.nct_id", ondelete="CASCADE"))
    facility: Mapped[str | None] = mapped_column(Text)
    city: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str | None] = mapped_column(Text)
    zip: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(40))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)


class SyncState(Base):
    """Where `notifier sync` resumes: the LastUpdatePostDate cursor, advanced page by page."""

    __tablename__ = "sync_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    cursor: Mapped[str] = mapped_column(String(10))  # yyyy-mm-dd
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_run: Mapped[dict[str, Any] | None]  # the summary of the last completed run
