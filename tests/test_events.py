"""POST /v1/events: HMAC signatures, validation, storage before 202, duplicates; the queue path."""

from __future__ import annotations

import copy
import io
import json
import time
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock file
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from notifier.core.events import TrialChangeEvent
from notifier.data.models import Delivery, Event, RejectedEvent
from notifier.pipeline import encode, enqueue_event, post_events, sign
from notifier.resources import Resources
from tests.conftest import ADMIN_TOKEN, DATA, EVENT_SECRETS, run_worker
from tests.events_factory import new_study, record_ids, signed_headers, subscribe

EXAMPLES: list[dict[str, Any]] = json.loads((DATA / "events_examples.json").read_text())
SCHEMA = json.loads((DATA / "trial_change_event.schema.json").read_text())
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

NEW_SECRET = "ev-new-" + "e" * 40


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Rotation in progress: the old secret (still used by the tests' helper) and a new one.
    return {"event_secrets": [*EVENT_SECRETS, NEW_SECRET]}


async def count(r: Resources, model: Any) -> int:
    async with r.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def queued_jobs(r: Resources) -> list[str]:
    return [job.function for job in await r.redis.queued_jobs(queue_name=r.settings.queue_name)]


# --- the schema ------------------------------------------------------------------------------


def all_reference_events() -> list[dict[str, Any]]:
    return [*copy.deepcopy(EXAMPLES), *(new_study(n) for n in record_ids())]


def test_reference_events_validate_against_both_schemas() -> None:
    """Every example and an event from each of the real records: valid there, valid here."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    events = all_reference_events()
    assert len(events) == 3 + len(record_ids()) >= 3 + 26
    for event in events:
        validator.validate(event)
        parsed = TrialChangeEvent.model_validate(event)
        # Nothing the pipeline sent is lost: unknown fields are kept.
        dumped = parsed.model_dump(mode="json")
        assert dumped["source"] == event["source"]
        assert dumped["study"]["match_keys"] == event["study"]["match_keys"]
        assert dumped["schema_version"] == "1"
    # The factory derives event ids as the pipeline does: same record version, same id.
    assert new_study("NCT05879978")["event_id"] == EXAMPLES[0]["event_id"]


def unique_reference_events() -> list[dict[str, Any]]:
    return list({e["event_id"]: e for e in all_reference_events()}.values())


# --- signed ingestion ------------------------------------------------------------------------


async def test_single_event_is_stored_before_202_with_its_whole_payload(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    event = copy.deepcopy(EXAMPLES[0])
    event["pipeline_note"] = {"anything": ["kept"]}
    body = json.dumps(event).encode()
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
    assert resp.status == 202
    assert await resp.json() == {"accepted": 1, "duplicates": 0}
    async with resources.sessions() as session:
        stored = (await session.scalars(select(Event))).one()
    assert stored.event_id == event["event_id"]
    assert (stored.nct_id, stored.change_kind, stored.status) == (
        "NCT05879978",
        "new_study",
        "received",
    )
    assert stored.payload["pipeline_note"] == {"anything": ["kept"]}
    assert stored.payload["study"]["condition_mesh"][3]["id_as_received"] == "D000055752"
    assert await queued_jobs(resources) == ["fanout_event"]


async def test_batch_then_the_same_batch_again_counts_duplicates_and_enqueues_nothing_new(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    events = unique_reference_events()
    first = await _post(client, events)
    assert first == {"accepted": len(events), "duplicates": 0}
    again = await _post(client, events)
    assert again == {"accepted": 0, "duplicates": len(events)}
    # A repeat inside one batch is a duplicate too.
    assert await _post(client, [events[0], events[0]]) == {"accepted": 0, "duplicates": 2}
    assert await count(resources, Event) == len(events)
    async with resources.sessions() as session:
        dups = dict((await session.execute(select(Event.event_id, Event.duplicates))).all())
    assert dups[events[0]["event_id"]] == 3
    assert dups[events[1]["event_id"]] == 1
    assert sorted(await queued_jobs(resources)) == ["fanout_event"] * len(events)


async def _post(client: TestClient[Any, Any], events: list[dict[str, Any]]) -> Any:
    body = encode(events)
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def test_a_full_batch_of_500_is_accepted_beyond_the_default_body_limit(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    events = []
    for i in range(500):
        event = new_study(record_ids()[i % 18], event_id=f"bulk-{i:04d}")
        events.append(event)
    body = encode(events)
    assert len(body) > resources.settings.max_body_bytes * 10
    resp = await client.post("/v1/events", data=io.BytesIO(body), headers=signed_headers(body))
    assert resp.status == 202, await resp.text()
    assert await resp.json() == {"accepted": 500, "duplicates": 0}
    assert await count(resources, Event) == 500


@pytest.mark.parametrize(
    "case",
    ["wrong_secret", "altered_body", "stale", "future", "missing", "garbage", "no_v1", "two_t"],
)
async def test_unsigned_or_misigned_requests_get_401_and_store_nothing(
    client: TestClient[Any, Any], resources: Resources, case: str
) -> None:
    body = encode([EXAMPLES[0]])
    now = int(time.time())
    headers = signed_headers(body)
    if case == "wrong_secret":
        headers = signed_headers(body, secret="not-the-secret-" + "x" * 30)
    elif case == "altered_body":
        body = body.replace(b"RECRUITING", b"COMPLETED", 1)
    elif case == "stale":
        headers = signed_headers(body, t=now - 301)
    elif case == "future":
        headers = signed_headers(body, t=now + 301)
    elif case == "missing":
        del headers["Notifier-Signature"]
    elif case == "garbage":
        headers["Notifier-Signature"] = "sha256=deadbeef"
    elif case == "no_v1":
        headers["Notifier-Signature"] = f"t={now}"
    elif case == "two_t":
        headers["Notifier-Signature"] = f"t={now},{headers['Notifier-Signature']}"
    resp = await client.post("/v1/events", data=body, headers=headers)
    assert resp.status == 401
    assert "signature" in (await resp.json())["error"]
    assert await count(resources, Event) == 0
    assert await queued_jobs(resources) == []


async def test_rotation_accepts_any_configured_secret_and_any_of_several_v1(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    body = encode([EXAMPLES[0]])
    resp = await client.post(
        "/v1/events", data=body, headers=signed_headers(body, secret=NEW_SECRET)
    )
    assert resp.status == 202
    # A pipeline mid-rotation signs with an unknown (newest) and a known secret.
    t = int(time.time())
    body = encode([EXAMPLES[1]])
    unknown = sign(body, "brand-new-" + "z" * 40, t).split(",")[1]
    header = f"{sign(body, EVENT_SECRETS[0], t)},{unknown}"
    resp = await client.post("/v1/events", data=body, headers={"Notifier-Signature": header})
    assert resp.status == 202
    # Within the tolerance a slightly old timestamp is fine.
    body = encode([EXAMPLES[2]])
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body, t=t - 290))
    assert resp.status == 202
    assert await count(resources, Event) == 3


# --- invalid events --------------------------------------------------------------------------


def _broken(field: str) -> dict[str, Any]:
    event = copy.deepcopy(EXAMPLES[0])
    if field == "nct_id":
        event["nct_id"] = "NCT123"
    elif field == "change_kind":
        event["change_kind"] = "became_famous"
    elif field == "occurred_on":
        event["occurred_on"] = "yesterday"
    elif field == "event_id":
        event["event_id"] = ""
    elif field == "study.brief_title":
        del event["study"]["brief_title"]
    elif field == "study.condition_mesh.0.id":
        event["study"]["condition_mesh"][0]["id"] = "X12"
    return event


@pytest.mark.parametrize(
    "field",
    [
        "nct_id",
        "change_kind",
        "occurred_on",
        "event_id",
        "study.brief_title",
        "study.condition_mesh.0.id",
    ],
)
async def test_an_invalid_event_is_422_with_field_errors_and_nothing_is_stored(
    client: TestClient[Any, Any], resources: Resources, field: str
) -> None:
    body = json.dumps(_broken(field)).encode()
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
    assert resp.status == 422
    assert field in (await resp.json())["fields"]
    # The same event inside a batch: the whole batch is refused, the index is named.
    batch = [EXAMPLES[1], EXAMPLES[2], _broken(field)]
    body = encode(batch)
    resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
    assert resp.status == 422
    assert f"events.2.{field}" in (await resp.json())["fields"]
    assert await count(resources, Event) == 0
    assert await queued_jobs(resources) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"\xff\xfe", "body"),
        (b"[1, 2]", "body"),
        (b'{"events": []}', "events"),
        (b'{"events": {"a": 1}}', "events"),
        (encode([EXAMPLES[0]] * 501), "events"),
    ],
)
async def test_malformed_bodies_and_oversized_batches_are_422(
    client: TestClient[Any, Any], resources: Resources, body: bytes, field: str
) -> None:
    resp = await client.post("/v1/events", data=io.BytesIO(body), headers=signed_headers(body))
    assert resp.status == 422
    assert field in (await resp.json())["fields"]
    assert await count(resources, Event) == 0


class TestBodyLimit:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"max_event_body_bytes": 4096}

    async def test_a_body_over_the_event_limit_is_413(
        self, client: TestClient[Any, Any], resources: Resources
    ) -> None:
        body = encode([EXAMPLES[0], EXAMPLES[1]])
        assert len(body) > 4096
        resp = await client.post("/v1/events", data=body, headers=signed_headers(body))
        assert resp.status == 413
        assert await count(resources, Event) == 0


# --- the Python helper and the queue path -----------------------------------------------------


async def test_pipeline_helper_signs_splits_and_posts(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    events = [new_study(n, event_id=f"helper-{n}") for n in record_ids()]
    url = str(client.make_url("/v1/events"))
    result = await post_events(url, events, EVENT_SECRETS[0], batch_size=5)
    assert result == {"accepted": len(events), "duplicates": 0}
    result = await post_events(url, events[:3], NEW_SECRET)
    assert result == {"accepted": 0, "duplicates": 3}
    assert await count(resources, Event) == len(events)


async def test_queue_path_validates_stores_and_deduplicates_like_http(
    resources: Resources,
) -> None:
    await subscribe(resources, "ada@example.org", study="NCT05879978")
    await enqueue_event(resources.redis, copy.deepcopy(EXAMPLES[0]))
    await enqueue_event(resources.redis, copy.deepcopy(EXAMPLES[0]))  # a duplicate: a no-op
    bad = copy.deepcopy(EXAMPLES[1])
    bad["nct_id"] = "nope"
    await enqueue_event(resources.redis, bad)
    worker = await run_worker(resources)  # asserts that no job failed: rejection is not failure
    assert worker.jobs_failed == 0
    async with resources.sessions() as session:
        stored = (await session.scalars(select(Event))).one()
        rejected = (await session.scalars(select(RejectedEvent))).one()
        deliveries = list(await session.scalars(select(Delivery)))
    assert stored.event_id == EXAMPLES[0]["event_id"]
    assert stored.duplicates == 1
    assert stored.status == "fanned_out"
    assert [d.status for d in deliveries] == ["sent"]
    assert rejected.source == "queue"
    assert "nct_id" in rejected.error
    assert json.loads(rejected.payload)["nct_id"] == "nope"


# --- admin progress and the published schema --------------------------------------------------


async def test_admin_event_progress(client: TestClient[Any, Any], resources: Resources) -> None:
    event = new_study("NCT05879978")
    url = f"/v1/admin/events/{event['event_id']}"
    assert (await client.get(url)).status == 401
    assert (await client.get("/v1/admin/events/unknown", headers=ADMIN)).status == 404
    for i in range(3):
        await subscribe(resources, f"p{i}@example.org", condition="Neuroendocrine Tumors")
    await _post(client, [event])
    await _post(client, [event])
    before = await (await client.get(url, headers=ADMIN)).json()
    assert before["status"] == "received"
    assert before["duplicates"] == 1
    await run_worker(resources)
    resp = await client.get(url, headers=ADMIN)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert await resp.json() == {
        "event_id": event["event_id"],
        "status": "fanned_out",
        "matched": 3,
        "sent": 3,
        "pending": 0,
        "failed": 0,
        "skipped": 0,
        "held": 0,
        "duplicates": 1,
        "compacted_at": None,
        "payload_purged_at": None,
    }


async def test_openapi_publishes_the_event_schema(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/openapi.json")).json()
    assert "post" in spec["paths"]["/v1/events"]
    assert "get" in spec["paths"]["/v1/admin/events/{event_id}"]
    schemas = spec["components"]["schemas"]
    event_schema = schemas["TrialChangeEvent"]
    assert {"event_id", "nct_id", "change_kind", "occurred_on", "study"} <= set(
        event_schema["required"]
    )
    # The published schema accepts the reference events (refs resolved within the spec).
    resolver_doc = {"components": {"schemas": schemas}, **event_schema}
    validator = jsonschema.Draft202012Validator(resolver_doc)
    for event in all_reference_events():
        validator.validate(event)


@pytest.mark.parametrize(
    ("v1", "says"),
    [
        ("deadbeef", "v1 must be 64 hex characters (HMAC-SHA256), got 8 characters"),
        ("z" * 64, "v1 must be 64 hex characters (HMAC-SHA256), got not hex"),
    ],
)
async def test_a_malformed_v1_is_reported_as_such_not_as_missing(
    client: TestClient[Any, Any], resources: Resources, v1: str, says: str
) -> None:
    body = encode([EXAMPLES[0]])
    headers = {**signed_headers(body), "Notifier-Signature": f"t={int(time.time())},v1={v1}"}
    resp = await client.post("/v1/events", data=body, headers=headers)
    assert resp.status == 401
    error = (await resp.json())["error"]
    assert says in error
    assert "no v1" not in error
