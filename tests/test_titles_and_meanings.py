"""A study is named by its title wherever a person meets it; a status says what it means and
when it changed (issue 17: "NCT05879978" alone, and "Recruiting → Active, not recruiting" with
no plain meaning nor date)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from notifier.data.models import Event, Subscriber, Subscription
from notifier.data.queries import study_titles
from notifier.mail.alerts import render_alert
from notifier.mail.digest import render_digest
from notifier.mail.labels import STATUS_LABELS, STATUS_MEANINGS, status_meaning
from notifier.ops.preview import subscription
from notifier.resources import Resources
from tests.conftest import run_worker
from tests.events_factory import status_change
from tests.factories import event_payload, make_event
from tests.smtp_server import RecordingSMTP
from tests.test_mail_format import R
from tests.test_subscriptions import (  # noqa: F401  # `resources` is a fixture override
    ADA,
    STUDY,
    Client,
    confirm_path,
    parts,
    resources_closing_limits,
    signup,
)

TITLE = event_payload(nct_id=STUDY)["study"]["brief_title"]
MEANING = "Active, not recruiting — the study has all its participants and no longer takes new ones"


async def test_study_titles_come_from_the_newest_stored_event(resources: Resources) -> None:
    async with resources.sessions.begin() as session:
        assert await study_titles(session, [STUDY]) == {}
        await make_event(session, nct_id=STUDY)
        assert await study_titles(session, [STUDY, "NCT00000000"]) == {STUDY: TITLE}


async def test_confirm_mail_and_every_page_name_the_study_by_its_title(
    client: Client, resources: Resources, smtp: RecordingSMTP
) -> None:
    async with resources.sessions.begin() as session:
        await make_event(session, nct_id=STUDY)
    named = f"“{TITLE}” ({STUDY})"
    assert (await signup(client)).status == 202
    await run_worker(resources)
    text, html = parts(smtp.to(ADA)[-1].message)
    assert named in text
    assert named in html.replace("&#34;", '"')
    path = confirm_path(smtp)
    assert named in await (await client.get(path)).text()
    confirmed = await (await client.post(path, headers={"Accept": "text/html"})).text()
    assert named in confirmed

    async with resources.sessions() as session:
        sub = await session.scalar(select(Subscription))
        assert sub is not None
    manage = await client.get(f"/v1/manage/{resources.tokens.manage(sub.subscriber_id)}")
    assert named in await manage.text()
    unsubscribe = f"/v1/unsubscribe/{resources.tokens.unsubscribe(sub.id)}"
    assert named in await (await client.get(unsubscribe)).text()
    assert named in await (await client.post(unsubscribe, data={"via": "page"})).text()


def test_every_status_has_a_plain_meaning() -> None:
    assert set(STATUS_MEANINGS) == set(STATUS_LABELS)
    assert status_meaning("ACTIVE_NOT_RECRUITING") == MEANING
    assert status_meaning("SOMETHING_NEW") == "Something new"


@pytest.mark.parametrize("kind", ["alert", "digest"])
def test_a_status_alert_explains_itself_and_dates_the_change(kind: str) -> None:
    event = status_change(STUDY, "RECRUITING", "ACTIVE_NOT_RECRUITING")
    event["occurred_on"] = "2025-05-03"
    subs = [subscription(7, "study", STUDY)]
    if kind == "alert":
        mail = render_alert(R, event, subscriber_id=1, email=ADA, subscriptions=subs)
    else:
        person = Subscriber(id=1, email=ADA, email_hash="x", timezone="UTC")
        stored = Event(id=1, event_id="e", nct_id=STUDY, change_kind="status_changed")
        stored.payload = event
        mail = render_digest(R, person, [(stored, subs)], frequency="daily", now=datetime.now(UTC))
    for body in (mail.text, re.sub(r"<[^>]+>", " ", mail.html)):
        assert MEANING in " ".join(body.split())
        assert "Changed on 3 May 2025" in body
    # "Why you got this" names the study by its title too.
    assert f"You follow “{TITLE[:40]}" in mail.text
