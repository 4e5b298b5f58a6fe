"""Event -> match keys, and the indexed, keyset-paginated query for the subscribers it reaches.

Subscriptions store what they match on (`match_key` "study:NCT…" / "cond:<normalised text>",
and for a condition its MeSH descriptor `mesh_id` with an optional `requires` fact); an event is
turned into the same vocabulary once (core.concepts: the descriptors its own words support, and
every broader descriptor a subscriber may hold), and every lookup is one small range scan of a
partial index (`ix_subscriptions_active_key`, `ix_subscriptions_active_mesh`) per key, never a
scan of the subscriptions table.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from notifier.core.concepts import study_terms
from notifier.core.normalize import condition_keys, normalize_nct
from notifier.data.models import Subscription, SubscriptionView
from notifier.data.queries import custom_plans, one_of

# Written exactly as the partial indexes' predicates, so both planners can prove they apply
# (a bound parameter in place of 'confirmed' would hide the implication from PostgreSQL).
ACTIVE_SQL = "status = 'confirmed' AND paused = false"
ACTIVE_MESH_SQL = ACTIVE_SQL + " AND mesh_id IS NOT NULL"
MATCH_KEY_MAX = 260  # the column's width: a longer key cannot match anything


NEW_STUDY = "new_study"
STARTS_RECRUITING = "starts_recruiting"  # a condition subscription's optional extra


@dataclass(frozen=True)
class MatchKeys:
    """What an event matches, in the subscriptions' own vocabulary."""

    change_kind: str
    keys: tuple[str, ...]  # study:NCT… (the id and its aliases): every event
    # What condition subscriptions see the event as: new_study, starts_recruiting, or None.
    condition_kind: str | None = None
    text_keys: tuple[str, ...] = ()  # cond:… of the study's conditions and supported MeSH terms
    mesh_ids: tuple[str, ...] = ()  # 9-digit descriptors a condition subscription may hold
    facts: tuple[str, ...] = ()  # what a subscription's `requires` may name (ids and w:words)

    def admits(self, sub: SubscriptionView) -> bool:
        """The same rule as the SQL, for one loaded subscription, plus its event-kind choice."""
        if sub.status != "confirmed" or sub.paused:
            return False
        kinds = sub.event_kinds
        if sub.kind == "study":
            # None (or an empty choice, read as "not narrowed") means every kind.
            return sub.match_key in self.keys and (not kinds or self.change_kind in kinds)
        kind = self.condition_kind
        if kind is None or kind not in (kinds or [NEW_STUDY]):
            return False
        if sub.match_key in self.text_keys:
            return True
        return sub.mesh_id in self.mesh_ids and (sub.requires is None or sub.requires in self.facts)

    @property
    def empty(self) -> bool:
        return not (self.keys or self.text_keys or self.mesh_ids)


def starts_recruiting(event: dict[str, Any]) -> bool:
    """A status change whose new overall status is RECRUITING."""
    if event.get("change_kind") != "status_changed":
        return False
    status = str((event.get("study") or {}).get("overall_status") or "").upper()
    return status == "RECRUITING"


def match_keys(event: dict[str, Any]) -> MatchKeys:
    """Study keys for every event; condition keys for new studies and studies that start
    recruiting (those reach only condition subscriptions that chose it)."""
    kind = str(event.get("change_kind", ""))
    ncts = [event.get("nct_id", ""), *event.get("nct_id_aliases", [])]
    keys = {f"study:{n}" for n in (normalize_nct(str(x)) for x in ncts) if n}
    condition_kind = (
        NEW_STUDY if kind == NEW_STUDY else STARTS_RECRUITING if starts_recruiting(event) else None
    )
    if condition_kind is None:
        return MatchKeys(change_kind=kind, keys=tuple(sorted(keys)))
    terms = study_terms(event.get("study") or {})
    texts = {f"cond:{k}" for text in terms.texts for k in condition_keys(text)}
    return MatchKeys(
        change_kind=kind,
        keys=tuple(sorted(keys)),
        condition_kind=condition_kind,
        text_keys=tuple(sorted(k for k in texts if len(k) <= MATCH_KEY_MAX)),
        mesh_ids=tuple(sorted(terms.keys)),
        facts=tuple(sorted(terms.facts)),
    )


def _chose(kind: str, *, unset_means_it: bool) -> ColumnElement[bool]:
    """The subscription's event-kind choice (a JSON list, or NULL) includes `kind`; written as a
    filter on the row the index found (JSON text on both dialects)."""
    as_text = cast(Subscription.event_kinds, Text)
    chosen = as_text.like(f'%"{kind}"%')
    if not unset_means_it:
        return chosen
    # The JSON column stores None as JSON null (SQLAlchemy's default), not as SQL NULL.
    unset = or_(Subscription.event_kinds.is_(None), as_text.in_(("null", "[]")))
    return or_(unset, chosen)


def _range(where: Any, active: str, cursor: Any, limit: Any) -> Select[Any]:
    return (
        select(Subscription.subscriber_id)
        .where(where, text(active), Subscription.subscriber_id > cursor)
        .order_by(Subscription.subscriber_id)
        .limit(limit)
    )


def page_parts(mk: MatchKeys, cursor: Any, limit: Any) -> list[Select[Any]]:
    """One small indexed range per match key: `limit` subscriber ids above `cursor`, ordered
    (each an int, or a bound parameter given at execution). The event-kind choice and a
    subscription's required fact are filters on the rows each range walks, in index order."""
    study_kind = _chose(mk.change_kind, unset_means_it=True)
    parts = [
        _range(and_(Subscription.match_key == k, study_kind), ACTIVE_SQL, cursor, limit)
        for k in mk.keys
    ]
    if mk.condition_kind is None:
        return parts
    wanted = _chose(mk.condition_kind, unset_means_it=mk.condition_kind == NEW_STUDY)
    for k in mk.text_keys:
        parts.append(_range(and_(Subscription.match_key == k, wanted), ACTIVE_SQL, cursor, limit))
    required = or_(Subscription.requires.is_(None), Subscription.requires.in_(mk.facts or [""]))
    for mesh in mk.mesh_ids:
        where = and_(Subscription.mesh_id == mesh, wanted, required)
        parts.append(_range(where, ACTIVE_MESH_SQL, cursor, limit))
    return parts


@lru_cache(maxsize=64)
def _page_statements(mk: MatchKeys) -> tuple[Select[Any], ...]:
    """page_parts with :cursor and :limit bound at execution: built once per event rather than
    once per page (building the statements cost a visible share of each page in cProfile)."""
    cursor, limit = bindparam("cursor", type_=BigInteger), bindparam("limit", type_=Integer)
    return tuple(page_parts(mk, cursor, limit))


async def matching_page(
    session: AsyncSession,
    mk: MatchKeys,
    cursor: int,
    limit: int,
    exhausted: set[int] | None = None,
) -> list[int]:
    """Next `limit` distinct matching subscriber ids above `cursor`.

    Each key's range runs as its own statement and the sorted results are merged here. As one
    UNION ALL statement, PostgreSQL's generic plan for the prepared statement was several times
    slower than the plain ranges (measured in bench/match_scan); each range alone always takes
    its partial index in order.

    A caller walking pages may pass the same `exhausted` set each time: a range that returned
    fewer than `limit` ids has nothing above them, so later pages skip it (an event's study key
    and its small condition keys cost one round trip each on the first page, not on every page
    of a large audience). A subscription confirmed meanwhile under a skipped key is missed, as
    it would be if it had come a moment after the fan-out.
    """
    conn = await session.connection()  # Core execution: no ORM bookkeeping for plain ids
    runs: dict[int, list[int]] = {}
    params = {"cursor": cursor, "limit": limit}
    for index, part in enumerate(_page_statements(mk)):
        if exhausted is None or index not in exhausted:
            runs[index] = list((await conn.execute(part, params)).scalars())
    if len(runs) <= 1:
        page = next(iter(runs.values()), [])
    else:
        page = []
        last = cursor
        for sid in heapq.merge(*runs.values()):
            if sid != last:
                page.append(sid)
                last = sid
                if len(page) == limit:
                    break
    if exhausted is not None:
        # Done: the range had no more rows, and every row it had made it into this page.
        top = page[-1] if page else cursor
        exhausted.update(i for i, run in runs.items() if len(run) < limit and run[-1:] <= [top])
    return page


async def iter_matching(
    sessions: async_sessionmaker[AsyncSession], mk: MatchKeys, page_size: int, cursor: int = 0
) -> AsyncIterator[list[int]]:
    """Stream every matching subscriber id in pages on one connection in autocommit mode: each
    page is its own statement (no long transaction, no snapshot held), with no BEGIN/COMMIT
    round trips between pages."""
    exhausted: set[int] = set()
    async with sessions() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        while True:
            page = await matching_page(session, mk, cursor, page_size, exhausted)
            if not page:
                return
            yield page
            if len(page) < page_size:
                return
            cursor = page[-1]


async def active_matches(
    session: AsyncSession, mk: MatchKeys, subscriber_ids: Iterable[int]
) -> dict[int, list[Matched]]:
    """Each subscriber's currently active subscriptions that match: read fresh before sending."""
    ids = sorted(set(subscriber_ids))
    if not ids or mk.empty:
        return {}
    # asyncpg prepares each statement once per connection; after five runs PostgreSQL may
    # switch to a generic plan, which on a table never analyzed (a fresh deployment, a bulk
    # signup) reads every confirmed subscription and filters by subscriber_id: 156-260 ms a
    # batch instead of ~10 ms. A custom plan for each run, in this transaction only, costs a
    # round trip a batch and never that.
    await custom_plans(session)
    conditions: list[ColumnElement[bool]] = [Subscription.match_key.in_(mk.keys)]
    if mk.text_keys:
        conditions.append(Subscription.match_key.in_(mk.text_keys))
    if mk.mesh_ids:
        conditions.append(Subscription.mesh_id.in_(mk.mesh_ids))
    rows = await session.execute(
        select(*_matched_columns())
        .where(one_of(session, Subscription.subscriber_id, ids), text(ACTIVE_SQL), or_(*conditions))
        .order_by(Subscription.subscriber_id, Subscription.id)
    )
    return _admitted(mk, [Matched(*row) for row in rows])


async def active_matches_between(
    session: AsyncSession, mk: MatchKeys, after_id: int, last_id: int
) -> dict[int, list[Matched]]:
    """active_matches of every subscriber in (after_id, last_id], in subscriber order: a fan-out
    slice's run, who matches in it and with what, in one statement (before, a statement a
    match key for the ids, then the subscriptions of those ids)."""
    if last_id <= after_id or mk.empty:
        return {}
    rows = await session.execute(between_statement(mk, after_id, last_id))
    # A subscription two keys match (its condition text and its MeSH id) comes twice.
    found = {row.id: Matched(*row) for row in rows}
    return _admitted(mk, sorted(found.values(), key=lambda m: (m.subscriber_id, m.id)))


def between_statement(mk: MatchKeys, after_id: int, last_id: int) -> CompoundSelect[Any]:
    """The subscriptions in (after_id, last_id] that may match `mk`, as one range a match key
    (UNION ALL), each the leading column of a partial index with the run as its second: every
    branch stays an index range whatever the planner knows of the table (a range of
    subscriber ids with the keys as a filter may be walked through the subscriber_id index,
    and a rare condition's slice spans most of the table; tests/test_matching.py holds the
    plans, generic and custom, on a table never analyzed)."""
    run = (Subscription.subscriber_id > after_id, Subscription.subscriber_id <= last_id)
    columns = _matched_columns()
    branches = [
        select(*columns).where(Subscription.match_key == key, text(ACTIVE_SQL), *run)
        for key in (*mk.keys, *mk.text_keys)
    ]
    branches += [
        select(*columns).where(Subscription.mesh_id == mesh, text(ACTIVE_MESH_SQL), *run)
        for mesh in mk.mesh_ids
    ]
    return union_all(*branches)


def _matched_columns() -> list[Any]:
    return [getattr(Subscription, name) for name in _MATCHED_FIELDS]


def _admitted(mk: MatchKeys, subs: Iterable[Matched]) -> dict[int, list[Matched]]:
    found: dict[int, list[Matched]] = {}
    for sub in subs:
        if mk.admits(sub):
            found.setdefault(sub.subscriber_id, []).append(sub)
    return found


@dataclass(frozen=True, slots=True)
class Matched:
    """A subscription as the send path reads it: plain columns, not an ORM object (loading
    500 of those a batch was ~4% of a sending worker's CPU)."""

    id: int
    subscriber_id: int
    kind: str
    match_key: str
    label: str
    mesh_id: str | None
    requires: str | None
    status: str
    paused: bool
    frequency: str
    discreet: bool
    event_kinds: list[Any] | None


_MATCHED_FIELDS = tuple(Matched.__dataclass_fields__)
