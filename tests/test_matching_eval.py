"""The labelled matching evaluation (tests/data/matching_eval.json, written by hand before the
code): every subscription made and confirmed, every event posted through the real
`POST /v1/events`, the real worker run, and who got which alert read from the deliveries table
and the SMTP server. Precision and recall are printed; below 0.97 / 0.90 the test fails."""

from __future__ import annotations

import copy
import json
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.data.models import Delivery, Event, Subscriber
from notifier.ops.sample_events import (
    build_event,
    earlier_version,
    load_records,
    with_fewer_sites,
)
from notifier.resources import Resources
from tests.conftest import DATA, run_worker
from tests.events_factory import post_events, subscribe
from tests.smtp_server import RecordingSMTP

EVAL = json.loads((DATA / "matching_eval.json").read_text(encoding="utf-8"))
MIN_PRECISION, MIN_RECALL = 0.97, 0.90


def _with_results(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the record with results posted, the version before them)."""
    now = copy.deepcopy(record)
    status = now["protocolSection"]["statusModule"]
    status["resultsFirstPostDateStruct"] = {"date": "2025-11-03", "type": "ACTUAL"}
    now["hasResults"] = True
    before = earlier_version(now, resultsFirstPostDateStruct=None)
    before["hasResults"] = False
    return now, before


def eval_event(spec: dict[str, Any], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One labelled event, built from its real record as the pipeline would."""
    record = records[spec["record"]]
    kind = spec["change_kind"]
    if kind == "new_study":
        event = build_event(record, kind)
    elif kind == "status_changed":
        now = earlier_version(record, overallStatus=spec["new_status"])
        before = earlier_version(record, overallStatus=spec["old_status"], whyStopped=None)
        event = build_event(now, kind, previous=before)
    elif kind == "results_posted":
        now, before = _with_results(record)
        event = build_event(now, kind, previous=before)
    elif kind == "dates_changed":
        before = earlier_version(record, primaryCompletionDateStruct={"date": "2020-01"})
        event = build_event(record, kind, previous=before)
    elif kind == "recruitment_sites_changed":
        sites = record["protocolSection"]["contactsLocationsModule"]["locations"]
        event = build_event(
            record, kind, previous=with_fewer_sites(record, sites[-1]["country"], 1)
        )
    else:
        raise AssertionError(f"no builder for {kind}")
    if spec.get("strip_mesh"):
        study = event["study"]
        study["condition_mesh"], study["condition_mesh_ancestors"] = [], []
        study["match_keys"] = [k for k in study["match_keys"] if not k.startswith("mesh:")]
    event["event_id"] = f"eval-{spec['id']}"  # strip_mesh copies share a version with the original
    return event


def address(sub_id: str) -> str:
    return f"{sub_id.lower()}@example.org"


async def test_labelled_matching_evaluation(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP, backend: str
) -> None:
    r = resources
    for sub in EVAL["subscriptions"]:
        if sub["kind"] == "study":
            await subscribe(
                r, address(sub["id"]), study=sub["study"], event_kinds=sub.get("changes")
            )
        else:
            await subscribe(r, address(sub["id"]), condition=sub["text"])
    records = load_records()
    events = [eval_event(spec, records) for spec in EVAL["events"]]
    answer = await post_events(client, events)
    assert answer["accepted"] == len(events), answer
    await run_worker(r)

    async with r.sessions() as session:
        rows = (
            await session.execute(
                select(Subscriber.email, Event.event_id)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .join(Event, Event.id == Delivery.event_pk)
                .where(Delivery.status == "sent")
            )
        ).all()
    got = {
        (email.split("@")[0].upper(), event_id.removeprefix("eval-")) for email, event_id in rows
    }
    # The deliveries table and the SMTP server agree, mail for mail.
    per_address: dict[str, int] = {}
    for m in smtp.messages:
        per_address[m.rcpt_to] = per_address.get(m.rcpt_to, 0) + 1
    sent: dict[str, int] = {}
    for sub_id, _ in got:
        sent[address(sub_id)] = sent.get(address(sub_id), 0) + 1
    assert per_address == sent

    expected = {(sub, ev) for sub, evs in EVAL["expected"].items() for ev in evs}
    tp, fp, fn = len(got & expected), sorted(got - expected), sorted(expected - got)
    precision = tp / (tp + len(fp)) if got else 0.0
    recall = tp / len(expected)
    print(  # noqa: T201  # the figures are the evaluation's output
        f"\nmatching evaluation [{backend}]: precision {precision:.3f}, recall {recall:.3f} "
        f"({tp} right, {len(fp)} wrong, {len(fn)} missed of {len(expected)})"
        f"\n  wrong: {fp}\n  missed: {fn}"
    )
    assert precision >= MIN_PRECISION, (precision, fp)
    assert recall >= MIN_RECALL, (recall, fn)
