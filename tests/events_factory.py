"""Trial-change events built from the real CT.gov records in tests/data/studies, plus subscribers.

`event_from_record` mirrors tests/data/trial_change_event.schema.json field by field, the way the
sync pipeline derives an event from an API v2 study record.
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import cache
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.clock import utcnow
from notifier.core.concepts import Concept, concept_of
from notifier.core.normalize import normalize_condition, normalize_mesh_id, normalize_nct
from notifier.data.models import FanoutSlice, Subscriber, Subscription
from notifier.jobs.fanout import fanout_event, materialise
from notifier.pipeline import encode, sign
from notifier.resources import Resources
from tests.conftest import DATA, EVENT_SECRETS

STUDIES = DATA / "studies"


@cache
def _records() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(STUDIES.glob("NCT*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        out[record["protocolSection"]["identificationModule"]["nctId"]] = record
    return out


def record_ids() -> list[str]:
    return list(_records())


def record(nct_id: str) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(_records()[nct_id]))  # a private copy
    return copied


def _mesh(items: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    out = []
    for item in items or []:
        mesh = normalize_mesh_id(item["id"])
        if mesh is not None:
            out.append({"id": mesh, "id_as_received": item["id"], "term": item["term"]})
    return out


def _date(struct: dict[str, Any] | None) -> dict[str, Any] | None:
    if not struct:
        return None
    return {"date": struct["date"], "type": struct.get("type")}


def event_from_record(
    rec: dict[str, Any],
    *,
    change_kind: str = "new_study",
    changes: list[dict[str, Any]] | None = None,
    version_key: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """One schema-valid event for a record; event_id = sha256(nct|version_key|kind)."""
    ps = rec["protocolSection"]
    ident, status = ps["identificationModule"], ps["statusModule"]
    nct = ident["nctId"]
    derived = rec.get("derivedSection", {})
    browse = derived.get("conditionBrowseModule", {})
    meshes, ancestors = _mesh(browse.get("meshes")), _mesh(browse.get("ancestors"))
    conditions = ps.get("conditionsModule", {}).get("conditions", [])
    keywords = ps.get("conditionsModule", {}).get("keywords", [])
    locations = ps.get("contactsLocationsModule", {}).get("locations", [])
    last_post = status["lastUpdatePostDateStruct"]["date"]
    first_post = status["studyFirstPostDateStruct"]["date"]
    version_key = version_key or f"{status['lastUpdateSubmitDate']}/{last_post}"
    occurred = last_post
    if change_kind == "new_study":
        occurred = first_post
    elif change_kind == "results_posted":
        occurred = (status.get("resultsFirstPostDateStruct") or {}).get("date", last_post)
    match_keys = sorted({f"mesh:{m['id']}" for m in meshes + ancestors})
    if not meshes:
        match_keys += sorted({f"text:{c.lower()}" for c in conditions + keywords})
    design = ps.get("designModule", {})
    return {
        "schema_version": "1",
        "event_id": event_id
        or hashlib.sha256(f"{nct}|{version_key}|{change_kind}".encode()).hexdigest(),
        "nct_id": nct,
        "nct_id_aliases": list(ident.get("nctIdAliases", [])),
        "change_kind": change_kind,
        "occurred_on": occurred,
        "submitted_on": status.get("lastUpdateSubmitDate"),
        "detected_at": "2025-12-10T08:00:00Z",
        "source": {
            "system": "clinicaltrials.gov",
            "api_version": "2.0.5",
            "data_timestamp": None,
            "version_holder": derived.get("miscInfoModule", {}).get("versionHolder"),
            "ctgov_version": None,
            "previous_ctgov_version": None,
            "module_labels": [],
            "version_key": version_key,
        },
        "study": {
            "url": f"https://clinicaltrials.gov/study/{nct}",
            "brief_title": ident["briefTitle"],
            "official_title": ident.get("officialTitle"),
            "acronym": ident.get("acronym"),
            "overall_status": status["overallStatus"],
            "last_known_status": status.get("lastKnownStatus"),
            "why_stopped": status.get("whyStopped"),
            "study_type": design.get("studyType"),
            "phases": design.get("phases", []),
            "lead_sponsor": ps.get("sponsorCollaboratorsModule", {})
            .get("leadSponsor", {})
            .get("name"),
            "has_results": bool(rec.get("hasResults", False)),
            "dates": {
                "study_first_post": _date(status.get("studyFirstPostDateStruct")),
                "last_update_post": _date(status.get("lastUpdatePostDateStruct")),
                "results_first_post": _date(status.get("resultsFirstPostDateStruct")),
                "start": _date(status.get("startDateStruct")),
                "primary_completion": _date(status.get("primaryCompletionDateStruct")),
                "completion": _date(status.get("completionDateStruct")),
            },
            "conditions": conditions,
            "keywords": keywords,
            "interventions": [
                {"type": i.get("type"), "name": i["name"]}
                for i in ps.get("armsInterventionsModule", {}).get("interventions", [])
            ],
            "condition_mesh": meshes,
            "condition_mesh_ancestors": ancestors,
            "match_keys": match_keys,
            "locations_summary": {
                "count": len(locations),
                "countries": sorted({loc["country"] for loc in locations if loc.get("country")}),
                "recruiting_count": sum(
                    1 for loc in locations if loc.get("status") == "RECRUITING"
                ),
            },
        },
        "changes": changes or [],
    }


def new_study(nct_id: str, **kw: Any) -> dict[str, Any]:
    return event_from_record(record(nct_id), **kw)


def status_change(nct_id: str, old: str, new: str, *, version_key: str = "v9") -> dict[str, Any]:
    """A status_changed event (a material change) for a real record."""
    event = event_from_record(
        record(nct_id),
        change_kind="status_changed",
        version_key=version_key,
        changes=[
            {
                "path": "protocolSection.statusModule.overallStatus",
                "op": "replace",
                "old": old,
                "new": new,
            }
        ],
    )
    event["study"]["overall_status"] = new
    return event


def signed_headers(
    body: bytes, *, secret: str = EVENT_SECRETS[0], t: int | None = None
) -> dict[str, str]:
    return {
        "Notifier-Signature": sign(body, secret, int(time.time()) if t is None else t),
        "Content-Type": "application/json",
    }


async def post_events(client: TestClient[Any, Any], events: list[dict[str, Any]]) -> Any:
    """POST a signed batch and return the 202 body."""
    body = encode(events)
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def subscribe(
    r: Resources,
    email: str,
    *,
    study: str | None = None,
    condition: str | None = None,
    mesh_id: str | None = None,
    broad: bool = False,
    status: str = "confirmed",
    paused: bool = False,
    frequency: str = "instant",
    discreet: bool = False,
    event_kinds: list[str] | None = None,
) -> Subscription:
    """A confirmed (by default) subscription, keyed exactly as signup keys it."""
    async with r.sessions.begin() as session:
        subscriber = await session.scalar(select(Subscriber).where(Subscriber.email == email))
        if subscriber is None:
            subscriber = Subscriber(
                email=email, email_hash=r.email_hash(email), first_confirmed_at=utcnow()
            )
            session.add(subscriber)
            await session.flush()
        concept = Concept(None, None, ())
        if study is not None:
            nct = normalize_nct(study)
            assert nct is not None
            kind, label, key = "study", nct, f"study:{nct}"
        else:
            assert condition is not None
            kind, label, key = "condition", condition, f"cond:{normalize_condition(condition)}"
            concept = concept_of(condition, normalize_mesh_id(mesh_id) if mesh_id else None)
        sub = Subscription(
            subscriber_id=subscriber.id,
            kind=kind,
            match_key=key,
            label=label,
            mesh_id=concept.mesh_id,
            requires=concept.requires,
            resolved=concept.stored,
            broad=broad,
            status=status,
            paused=paused,
            frequency=frequency,
            discreet=discreet,
            event_kinds=event_kinds,
            confirmed_at=utcnow() if status == "confirmed" else None,
        )
        session.add(sub)
        await session.flush()
        return sub


async def fan_out_rows(r: Resources, event_pk: int) -> list[int]:
    """Run an event's fan-out and write every slice's delivery rows, as the jobs would, without
    sending: the new delivery ids (their send jobs are the caller's to run or to lose)."""
    await fanout_event({"resources": r}, event_pk)
    async with r.sessions() as session:
        slices = list(
            await session.scalars(
                select(FanoutSlice.id)
                .where(FanoutSlice.event_pk == event_pk, FanoutSlice.status == "pending")
                .order_by(FanoutSlice.id)
            )
        )
    ids: list[int] = []
    for slice_id in slices:
        ids += await materialise(r, slice_id) or []
    return ids
