"""Queries on the study catalogue: titles and facts for pages and mail, sites, record versions."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.data.models import Event
from notifier.data.study_tables import Study, StudySite, StudyVersion

STUDY_URL = "https://clinicaltrials.gov/study/"
SHORT_TITLE_MAX = 40  # an acronym longer than this is no short name
EARTH_KM = 6371.0088


@dataclass(frozen=True)
class SitesSummary:
    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_country: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "by_status": self.by_status, "by_country": self.by_country}


@dataclass(frozen=True)
class StudyInfo:
    """What the service knows of a study, from its latest record or else from events."""

    nct_id: str
    title: str
    short_title: str | None
    overall_status: str | None
    why_stopped: str | None
    conditions: list[str]
    condition_mesh: list[dict[str, str]]
    last_update_posted: str | None
    from_record: bool
    sites: SitesSummary

    @property
    def url(self) -> str:
        return STUDY_URL + self.nct_id

    @property
    def name(self) -> str:
        """How a page or mail names the study in a line: the short title when it has one."""
        return short_name(self.nct_id, self.title, self.short_title)


def short_name(nct_id: str, title: str | None, short_title: str | None) -> str:
    if short_title and len(short_title) <= SHORT_TITLE_MAX:
        return short_title
    return title or nct_id


async def study_titles(
    session: AsyncSession, nct_ids: Iterable[str], *, short: bool = False
) -> dict[str, str]:
    """NCT id -> brief title (or short name with `short`), for the ids the service knows:
    the catalogue first, else the newest stored event that names the study (events stored
    before the catalogue existed); callers fall back to the NCT id for the others."""
    return {
        nct: short_name(nct, title, acronym) if short else title
        for nct, (title, _, acronym) in (await _known(session, nct_ids)).items()
    }


async def study_headlines(
    session: AsyncSession, nct_ids: Iterable[str]
) -> dict[str, tuple[str, str | None]]:
    """NCT id -> (brief title, overall status) for the ids the service knows (as above)."""
    known = await _known(session, nct_ids)
    return {nct: (title, status) for nct, (title, status, _) in known.items()}


async def _known(
    session: AsyncSession, nct_ids: Iterable[str]
) -> dict[str, tuple[str, str | None, str | None]]:
    """NCT id -> (brief title, overall status, short title): catalogue rows, then events."""
    wanted = sorted({nct for nct in nct_ids if nct})
    if not wanted:
        return {}
    rows = await session.execute(
        select(Study.nct_id, Study.brief_title, Study.overall_status, Study.short_title).where(
            Study.nct_id.in_(wanted)
        )
    )
    known = {nct: (title, status, acronym) for nct, title, status, acronym in rows}
    missing = [nct for nct in wanted if nct not in known]
    if not missing:
        return known
    newest = (
        select(func.max(Event.id)).where(Event.nct_id.in_(missing)).group_by(Event.nct_id)
    ).scalar_subquery()
    for nct, payload in await session.execute(
        select(Event.nct_id, Event.payload).where(Event.id.in_(newest))
    ):
        study = (payload or {}).get("study") or {}
        title, status = study.get("brief_title"), study.get("overall_status")
        if isinstance(title, str) and title.strip():
            known[nct] = (
                " ".join(title.split()),
                status if isinstance(status, str) else None,
                None,
            )
    return known


async def study_info(session: AsyncSession, nct_id: str) -> StudyInfo | None:
    study = await session.get(Study, nct_id)
    if study is None:
        return None
    return StudyInfo(
        nct_id=study.nct_id,
        title=study.brief_title,
        short_title=study.short_title,
        overall_status=study.overall_status,
        why_stopped=study.why_stopped,
        conditions=[str(c) for c in study.conditions or []],
        condition_mesh=[m for m in study.condition_mesh or [] if isinstance(m, dict)],
        last_update_posted=study.last_update_posted,
        from_record=study.versions > 0,
        sites=await sites_summary(session, nct_id),
    )


async def sites_summary(session: AsyncSession, nct_id: str) -> SitesSummary:
    rows = (
        await session.execute(
            select(StudySite.status, StudySite.country, func.count())
            .where(StudySite.nct_id == nct_id)
            .group_by(StudySite.status, StudySite.country)
        )
    ).all()
    by_status: Counter[str] = Counter()
    by_country: Counter[str] = Counter()
    for status, country, count in rows:
        by_status[status or "UNKNOWN"] += count
        by_country[country or "Unknown"] += count
    return SitesSummary(
        total=sum(by_status.values()),
        by_status=dict(sorted(by_status.items())),
        by_country=dict(sorted(by_country.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


async def replace_sites(
    session: AsyncSession, nct_id: str, sites: Sequence[dict[str, Any]], *, replace: bool = True
) -> None:
    """The study's sites become exactly `sites` (dicts of StudySite's columns); `replace=False`
    when the study has none yet (its first record) saves the DELETE."""
    if replace:
        await session.execute(delete(StudySite).where(StudySite.nct_id == nct_id))
    if sites:
        await session.execute(insert(StudySite), [{**site, "nct_id": nct_id} for site in sites])


@dataclass(frozen=True)
class NearbySite:
    nct_id: str
    facility: str | None
    city: str | None
    country: str | None
    status: str | None
    km: float


async def sites_within(
    session: AsyncSession, latitude: float, longitude: float, km: float, *, limit: int = 1000
) -> list[NearbySite]:
    """Sites within `km` of a point, nearest first: a bounding box on the (latitude, longitude)
    index, then the great-circle distance of each candidate."""
    dlat = math.degrees(km / EARTH_KM)
    query = select(StudySite).where(
        StudySite.latitude.between(latitude - dlat, latitude + dlat),
        StudySite.longitude.is_not(None),
    )
    cos_lat = math.cos(math.radians(min(89.9, abs(latitude) + dlat)))
    dlon = math.degrees(km / (EARTH_KM * cos_lat)) if cos_lat > 0 else 180.0
    if dlon < 180 and longitude - dlon >= -180 and longitude + dlon <= 180:
        query = query.where(StudySite.longitude.between(longitude - dlon, longitude + dlon))
    found = []
    for site in await session.scalars(query):
        assert site.latitude is not None
        assert site.longitude is not None
        distance = haversine_km(latitude, longitude, site.latitude, site.longitude)
        if distance <= km:
            found.append(
                NearbySite(
                    site.nct_id, site.facility, site.city, site.country, site.status, distance
                )
            )
    found.sort(key=lambda s: s.km)
    return found[:limit]


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


async def latest_snapshot(session: AsyncSession, nct_id: str) -> bytes | None:
    snapshot: bytes | None = await session.scalar(
        select(StudyVersion.snapshot)
        .where(StudyVersion.nct_id == nct_id)
        .order_by(StudyVersion.seq.desc())
        .limit(1)
    )
    return snapshot


async def purge_versions(session: AsyncSession, nct_id: str, newest_seq: int, kept: int) -> None:
    """Keep the newest `kept` versions of one study (run as each version is stored, so the
    table holds at most kept x studies rows)."""
    await session.execute(
        delete(StudyVersion).where(
            StudyVersion.nct_id == nct_id, StudyVersion.seq <= newest_seq - kept
        )
    )
