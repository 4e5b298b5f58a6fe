"""Matching on real records: NCT ids and aliases, condition text, MeSH ids, broad ancestors only
when chosen, only active subscriptions; keyset pages; index scans only (EXPLAIN on PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from notifier.core.matching import (
    active_matches,
    active_matches_between,
    between_statement,
    iter_matching,
    match_keys,
    page_parts,
)
from notifier.data.models import Subscriber, Subscription
from notifier.resources import Resources
from tests.events_factory import new_study, status_change, subscribe


async def matched_emails(r: Resources, event: dict[str, Any], page_size: int = 1000) -> set[str]:
    ids: list[int] = []
    async for page in iter_matching(r.sessions, match_keys(event), page_size):
        ids.extend(page)
    assert len(ids) == len(set(ids)), "a subscriber appeared twice"
    assert ids == sorted(ids)
    async with r.sessions() as session:
        rows = await session.scalars(select(Subscriber.email).where(Subscriber.id.in_(ids)))
        return set(rows)


def test_match_keys_of_a_new_study() -> None:
    mk = match_keys(new_study("NCT05879978"))
    assert mk.keys == ("study:NCT05879978",)
    assert mk.condition_kind == "new_study"
    # Condition texts, their parenthesised acronyms, and the supported MeSH terms' names.
    assert {
        "cond:small cell lung carcinoma sclc",
        "cond:small cell lung carcinoma",
        "cond:sclc",
        "cond:neuroendocrine neoplasms",
        "cond:neuroendocrine tumors",
        "cond:lung neoplasms",
    } <= set(mk.text_keys)
    # The descriptors and every broader one a subscriber may hold (the vocabulary's rule).
    assert {"D000055752", "D000008175", "D000013899", "D000009369"} <= set(mk.mesh_ids)
    assert "D000008545" not in mk.mesh_ids  # Melanoma is narrower, not broader


def test_other_events_match_the_study_and_its_aliases_only() -> None:
    event = status_change("NCT05879978", "RECRUITING", "ACTIVE_NOT_RECRUITING")
    event["nct_id_aliases"] = ["NCT01234567"]
    mk = match_keys(event)
    assert mk.keys == ("study:NCT01234567", "study:NCT05879978")
    assert mk.condition_kind is None
    assert mk.text_keys == mk.mesh_ids == ()


def test_unpadded_mesh_ids_are_normalised() -> None:
    mk = match_keys(new_study("NCT06610240"))  # 2025 format: D002289
    assert "D000002289" in mk.mesh_ids


async def test_nct05879978_reaches_net_and_sclc_followers_not_melanoma(
    resources: Resources,
) -> None:
    r = resources
    await subscribe(r, "net@example.org", condition="Neuroendocrine Tumors")
    await subscribe(r, "sclc@example.org", condition="Small Cell Lung Carcinoma")
    await subscribe(r, "sclc-acronym@example.org", condition="SCLC")
    await subscribe(r, "net-mesh@example.org", condition="NET", mesh_id="D018358")
    # MeSH files Melanoma under Neuroendocrine Tumors; a melanoma follower must not get this.
    await subscribe(r, "melanoma@example.org", condition="Melanoma", mesh_id="D008545", broad=True)
    await subscribe(r, "lung-cancer@example.org", condition="Lung cancer")
    # Thoracic Neoplasms is broader: it catches the study, `broad` or not.
    await subscribe(
        r, "thoracic-broad@example.org", condition="Thoracic tumours", mesh_id="D013899", broad=True
    )
    await subscribe(
        r, "thoracic-narrow@example.org", condition="Thoracic tumours", mesh_id="D13899"
    )
    await subscribe(r, "study@example.org", study="nct05879978")
    await subscribe(r, "other-study@example.org", study="NCT05844332")

    assert await matched_emails(r, new_study("NCT05879978")) == {
        "net@example.org",
        "sclc@example.org",
        "sclc-acronym@example.org",
        "net-mesh@example.org",
        "lung-cancer@example.org",
        "thoracic-broad@example.org",
        "thoracic-narrow@example.org",
        "study@example.org",
    }
    # The NET-only study reaches NET followers but not SCLC ones.
    assert await matched_emails(r, new_study("NCT05844332")) == {
        "net@example.org",
        "net-mesh@example.org",
        "other-study@example.org",
    }


async def test_studies_without_mesh_match_by_text(resources: Resources) -> None:
    r = resources
    await subscribe(r, "gastric@example.org", condition="gastric or GASTROESOPHAGEAL  cancer")
    await subscribe(r, "nsclc@example.org", condition="NSCLC")
    await subscribe(r, "stomach@example.org", condition="Stomach Neoplasms", mesh_id="D013274")
    # "Gastric or Gastroesophageal Cancer" is read as gastric cancer too: Stomach Neoplasms.
    assert await matched_emails(r, new_study("NCT05913115")) == {
        "gastric@example.org",
        "stomach@example.org",
    }
    assert await matched_emails(r, new_study("NCT02856893")) == {"nsclc@example.org"}


async def test_both_mesh_id_forms_match_one_subscription(resources: Resources) -> None:
    await subscribe(resources, "nsclc-mesh@example.org", condition="NSCLC", mesh_id="D002289")
    for nct in ("NCT05826366", "NCT06610240", "NCT05701787"):  # D000002289 and D002289
        assert await matched_emails(resources, new_study(nct)) == {"nsclc-mesh@example.org"}


async def test_only_confirmed_unpaused_subscriptions_match(resources: Resources) -> None:
    r = resources
    await subscribe(r, "active@example.org", study="NCT05879978")
    await subscribe(r, "pending@example.org", study="NCT05879978", status="pending")
    await subscribe(r, "gone@example.org", study="NCT05879978", status="unsubscribed")
    await subscribe(r, "paused@example.org", study="NCT05879978", paused=True)
    await subscribe(r, "cond-paused@example.org", condition="SCLC", paused=True)
    assert await matched_emails(r, new_study("NCT05879978")) == {"active@example.org"}


async def test_condition_subscriptions_get_new_studies_only(resources: Resources) -> None:
    await subscribe(resources, "study@example.org", study="NCT05879978")
    await subscribe(resources, "cond@example.org", condition="Neuroendocrine Tumors")
    event = status_change("NCT05879978", "RECRUITING", "COMPLETED")
    assert await matched_emails(resources, event) == {"study@example.org"}


async def test_aliases_reach_subscriptions_made_under_an_old_id(resources: Resources) -> None:
    await subscribe(resources, "old-id@example.org", study="NCT00000001")
    event = status_change("NCT05879978", "RECRUITING", "COMPLETED")
    event["nct_id_aliases"] = ["NCT00000001"]
    assert await matched_emails(resources, event) == {"old-id@example.org"}


async def test_keyset_pages_cover_everyone_once(resources: Resources) -> None:
    r = resources
    expected = set()
    for i in range(40):
        email = f"p{i:02d}@example.org"
        expected.add(email)
        # Overlapping subscriptions: many subscribers match through two or three keys.
        await subscribe(r, email, condition=["SCLC", "Neuroendocrine Tumors"][i % 2])
        if i % 3 == 0:
            await subscribe(r, email, study="NCT05879978")
        if i % 4 == 0:
            await subscribe(r, email, condition="Lung tumours", mesh_id="D008175")
    event = new_study("NCT05879978")
    for page_size in (1, 7, 40, 1000):
        assert await matched_emails(r, event, page_size) == expected


async def test_active_matches_rechecks_and_honours_event_kinds(resources: Resources) -> None:
    r = resources
    a = await subscribe(r, "a@example.org", study="NCT05879978", event_kinds=["results_posted"])
    b = await subscribe(r, "b@example.org", study="NCT05879978", event_kinds=["status_changed"])
    c1 = await subscribe(r, "c@example.org", study="NCT05879978")
    c2 = await subscribe(r, "c@example.org", condition="SCLC")  # no status events for conditions
    mk = match_keys(status_change("NCT05879978", "RECRUITING", "COMPLETED"))
    async with r.sessions() as session:
        found = await active_matches(
            session, mk, [a.subscriber_id, b.subscriber_id, c1.subscriber_id]
        )
    assert {sid: [s.id for s in subs] for sid, subs in found.items()} == {
        b.subscriber_id: [b.id],
        c1.subscriber_id: [c1.id],
    }
    assert c2.subscriber_id == c1.subscriber_id


async def test_a_slice_run_reads_the_same_matches_as_its_ids(resources: Resources) -> None:
    """A fan-out slice reads who matches in its run of ids (after, last] in one statement: the
    same subscriptions active_matches finds for those ids, the run's ends as written (the
    first id excluded, the last included), a paused subscription and another kind's choice
    left out, a subscription two of the event's keys match read once."""
    r = resources
    subs = []
    for i in range(8):
        email = f"r{i}@example.org"
        kinds = ["results_posted"] if i == 3 else None
        subs.append(await subscribe(r, email, study="NCT05879978", event_kinds=kinds))
        if i % 2 == 0:  # a second matching subscription of the same subscriber
            subs.append(await subscribe(r, email, condition="Lung tumours", mesh_id="D008175"))
    await subscribe(r, "other@example.org", study="NCT00000102")  # another study
    # Matched twice by the statement: by its text and by its MeSH id (both the event's).
    twice = await subscribe(r, "r1@example.org", condition="Lung Neoplasms", mesh_id="D008175")
    subs.append(twice)
    async with r.sessions.begin() as session:
        await session.execute(  # paused: not a match until resumed
            update(Subscription)
            .where(Subscription.id == subs[10].id)  # r6's condition; r6 keeps their study
            .values(paused=True)
        )
    ids = sorted({s.subscriber_id for s in subs})
    # Subscriptions each event reaches: all but the paused one and r3's (results only) for a
    # new study; the study subscriptions but r3's for a status change (conditions never).
    events = (
        (new_study("NCT05879978"), len(subs) - 2),
        (status_change("NCT05879978", "RECRUITING", "ACTIVE"), 7),
    )
    for event, reached in events:
        mk = match_keys(event)
        async with r.sessions() as session:
            for after, last in ((0, ids[-1]), (ids[1], ids[5]), (ids[2], ids[2]), (ids[-1], 2**40)):
                run = [sid for sid in ids if after < sid <= last]
                found = await active_matches_between(session, mk, after, last)
                assert found == await active_matches(session, mk, run)
                assert list(found) == sorted(found)
            whole = await active_matches_between(session, mk, 0, ids[-1])
        assert set(whole) == set(ids) - {ids[3]}  # r3 chose results only
        assert sum(len(ms) for ms in whole.values()) == reached
        assert all(len({m.id for m in ms}) == len(ms) for ms in whole.values())  # no twice
    async with r.sessions() as session:
        mk = match_keys(new_study("NCT05879978"))
        raw = (await session.execute(between_statement(mk, 0, ids[-1]))).all()
    assert [row.id for row in raw].count(twice.id) == 2  # what the read above made once


@pytest.mark.postgres_only
async def test_every_page_range_uses_a_partial_index_not_a_scan(resources: Resources) -> None:
    """20,000 subscribers with 60,000 subscriptions: every branch is an index range scan."""
    async with resources.engine.begin() as conn:
        await _insert_subscribers(conn, "u", 20000)
        await conn.execute(
            text(
                "INSERT INTO subscriptions (subscriber_id, kind, match_key, label, mesh_id, broad,"
                " status, paused, frequency, discreet, requested_at, updated_at) "
                "SELECT s.id, 'condition',"
                " CASE WHEN s.id % 50 = 0 AND k = 1 THEN 'cond:sclc'"
                "  ELSE 'cond:topic ' || k || '-' || s.id % 997 END, 'topic',"
                " CASE WHEN s.id % 40 = 0 THEN 'D000055752'"
                "  ELSE 'D' || lpad(((s.id * k) % 1013)::text, 9, '0') END, k = 2,"
                " CASE WHEN s.id % 10 = 0 THEN 'pending' ELSE 'confirmed' END,"
                " false, 'instant', false, now(), now() "
                "FROM subscribers s CROSS JOIN generate_series(1, 3) k"
            )
        )
        await conn.execute(text("ANALYZE subscribers"))
        await conn.execute(text("ANALYZE subscriptions"))
        # The statements matching_page runs, one range per match key.
        parts = page_parts(match_keys(new_study("NCT05879978")), 1234, 1000)
        plans = []
        for part in parts:
            sql = part.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            plans.append("\n".join(row[0] for row in await conn.execute(text(f"EXPLAIN {sql}"))))
    assert len(plans) >= 3  # study keys, condition keys, MeSH ranges
    for plan in plans:
        assert "Seq Scan" not in plan, plan
        assert "ix_subscriptions_active_key" in plan or "ix_subscriptions_active_mesh" in plan, plan
    assert any("ix_subscriptions_active_key" in plan for plan in plans), plans
    assert any("ix_subscriptions_active_mesh" in plan for plan in plans), plans


async def test_pages_above_a_cursor_beyond_32_bits(resources: Resources) -> None:
    """Subscriber ids are BIGINT: a cursor past 2**31 is a valid place to resume."""
    from notifier.core.matching import matching_page

    await subscribe(resources, "a@example.org", study="NCT05879978")
    async with resources.sessions() as session:
        mk = match_keys(new_study("NCT05879978"))
        assert await matching_page(session, mk, 2**40, 100, set()) == []
        assert len(await matching_page(session, mk, 0, 100, set())) == 1


@pytest.mark.postgres_only
async def test_the_send_time_recheck_never_falls_to_a_generic_plan(resources: Resources) -> None:
    """On a subscriptions table never analyzed, ten batches in a row on one pooled connection
    (as one worker sends ten events): PostgreSQL plans each run for its own subscriber ids,
    never the generic plan that read every confirmed subscription (found measuring issue 20)."""
    async with resources.engine.begin() as conn:
        await _insert_subscribers(conn, "g", 3000)
        await conn.execute(
            text(
                "INSERT INTO subscriptions (subscriber_id, kind, match_key, label, broad, status,"
                " paused, frequency, discreet, requested_at, updated_at) "
                "SELECT id, 'study', 'study:NCT05879978', 'NCT05879978', false, 'confirmed',"
                " false, 'instant', false, now(), now() FROM subscribers"
            )
        )
    mk = match_keys(new_study("NCT05879978"))
    async with resources.sessions() as session:
        async with session.begin():
            ids = list(await session.scalars(select(Subscription.subscriber_id).limit(3000)))
        for batch in range(10):
            async with session.begin():
                chunk = ids[batch * 300 : (batch + 1) * 300]
                found = await active_matches(session, mk, chunk)
                assert sorted(found) == sorted(chunk)
        async with session.begin():
            plans = (
                await session.execute(
                    text(
                        "SELECT sum(generic_plans), sum(custom_plans) FROM pg_prepared_statements"
                        " WHERE statement LIKE 'SELECT subscriptions.id, %subscriber_id = ANY%'"
                    )
                )
            ).one()
    generic, custom = plans
    assert custom >= 10, plans
    assert generic == 0, plans


@pytest.mark.postgres_only
async def test_a_slice_reads_its_run_through_the_partial_indexes_unanalyzed(
    resources: Resources,
) -> None:
    """A fan-out slice's read of its run (between_statement) on a subscriptions table never
    analyzed (a fresh deployment, autovacuum behind): a rare condition's 40 followers among
    20,000 subscribers make one slice over the whole table. Every branch of the plan, custom or
    generic (asyncpg prepares it; PostgreSQL may switch after five runs), is a range of a
    partial index; never the subscriber_id index walked over the run, nor a sequential scan."""
    async with resources.engine.begin() as conn:
        await _insert_subscribers(conn, "x", 20000)
        await conn.execute(
            text(
                "INSERT INTO subscriptions (subscriber_id, kind, match_key, label, mesh_id, broad,"
                " status, paused, frequency, discreet, requested_at, updated_at) "
                "SELECT s.id, 'condition',"
                " CASE WHEN s.id % 500 = 0 AND k = 1 THEN 'cond:sclc'"
                "  ELSE 'cond:topic ' || k || '-' || s.id % 997 END, 'topic',"
                " CASE WHEN s.id % 500 = 250 AND k = 2 THEN 'D000055752'"
                "  ELSE 'D' || lpad(((s.id * k) % 1013)::text, 9, '0') END, false,"
                " 'confirmed', false, 'instant', false, now(), now() "
                "FROM subscribers s CROSS JOIN generate_series(1, 3) k"
            )
        )
        top = await conn.scalar(select(func.max(Subscriber.id)))
        assert top is not None
        mk = match_keys(new_study("NCT05879978"))
        assert "cond:sclc" in mk.text_keys
        assert "D000055752" in mk.mesh_ids
        compiled = between_statement(mk, 0, top).compile(dialect=conn.dialect)
        literal = between_statement(mk, 0, top).compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
        plans = {"custom": await _plan(conn, f"EXPLAIN {literal}")}
        values = ", ".join(
            str(v) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"
            for v in (compiled.params[name] for name in compiled.positiontup or [])
        )
        await conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        await conn.execute(text(f"PREPARE slice_run AS {compiled}"))
        plans["generic"] = await _plan(conn, f"EXPLAIN EXECUTE slice_run({values})")
        await conn.execute(text("DEALLOCATE slice_run"))
        found = await active_matches_between(AsyncSession(bind=conn), mk, 0, top)
    assert len(found) == 80  # the 40 by text and the 40 by MeSH id
    branches = len(mk.keys) + len(mk.text_keys) + len(mk.mesh_ids)
    for kind, plan in plans.items():
        assert "Seq Scan" not in plan, (kind, plan)
        uses = plan.count("ix_subscriptions_active_key") + plan.count(
            "ix_subscriptions_active_mesh"
        )
        assert uses == branches, (kind, plan)


async def _plan(conn: Any, sql: str) -> str:
    return "\n".join(row[0] for row in await conn.execute(text(sql)))


async def _insert_subscribers(conn: Any, prefix: str, count: int) -> None:
    """`count` subscribers in one statement (prefix1@example.org, …), for the plan tests."""
    await conn.execute(
        text(
            "INSERT INTO subscribers (email, email_hash, timezone, created_at) "
            "SELECT :prefix || g || '@example.org', md5(g::text), 'UTC', now() "
            "FROM generate_series(1, :count) g"
        ),
        {"prefix": prefix, "count": count},
    )
