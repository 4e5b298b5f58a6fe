"""Alert and digest mails on the wire: parseable, complete in both parts, safe headers, discreet."""

from __future__ import annotations

import email
import email.policy
import html
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from notifier.core.signing import header_value
from notifier.data.models import Event, Subscriber, Subscription
from notifier.mail.alerts import render_alert
from notifier.mail.digest import render_digest
from notifier.mail.labels import NAME_MAX, STATUS_LABELS, shorten
from notifier.mail.message import Mail, to_bytes
from notifier.mail.summaries import ChangeLine, match_reason, summarize
from notifier.ops.preview import mail_context, subscription
from notifier.ops.sample_events import build_event, earlier_version, load_records, with_fewer_sites
from notifier.resources import Resources
from tests.conftest import EVENT_SECRETS, PUBLIC_URL, make_settings, run_worker
from tests.smtp_server import RecordingSMTP

RECORDS = load_records()
READER = "reader@example.org"
R = mail_context(make_settings("sqlite+aiosqlite://", "smtp://127.0.0.1:1"))
REQUIRED = (
    "From",
    "To",
    "Subject",
    "Message-ID",
    "Date",
    "Auto-Submitted",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
MSGID = re.compile(r"^<[0-9a-f]{32}@notify\.example\.org>$")
PREHEADER = re.compile(r'<div style="display:none[^>]*>(.*?)</div>', re.S)


def real_events() -> Iterator[dict[str, Any]]:
    """Every record as a new study, plus the changes each record can show."""
    for record in RECORDS.values():
        status = record["protocolSection"]["statusModule"]["overallStatus"]
        yield build_event(record, "new_study")
        before = "RECRUITING" if status != "RECRUITING" else "NOT_YET_RECRUITING"
        yield build_event(
            record,
            "status_changed",
            previous=earlier_version(record, overallStatus=before, whyStopped=None),
        )
        yield build_event(
            record,
            "dates_changed",
            previous=earlier_version(record, primaryCompletionDateStruct={"date": "2020-01"}),
        )
        sites = record["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])
        if len(sites) > 1 and sites[-1].get("country"):
            previous = with_fewer_sites(record, sites[-1]["country"], 1)
            yield build_event(record, "recruitment_sites_changed", previous=previous)
        if record.get("hasResults"):
            old = earlier_version(record, resultsFirstPostDateStruct=None)
            old["hasResults"] = False
            yield build_event(record, "results_posted", previous=old)


EVENTS = list(real_events())


def subs_for(event: dict[str, Any], *, discreet: bool = False) -> list[Subscription]:
    found = [subscription(7, "study", event["nct_id"], discreet=discreet)]
    if event["change_kind"] == "new_study" and event["study"]["conditions"]:
        label = event["study"]["conditions"][0][:200]
        found.append(subscription(8, "condition", label, discreet=discreet))
    return found


def alert(event: dict[str, Any], *, discreet: bool = False, to: str = READER) -> Mail:
    subs = subs_for(event, discreet=discreet)
    return render_alert(R, event, subscriber_id=3, email=to, subscriptions=subs)


def digest(events: list[dict[str, Any]], *, discreet: bool = False) -> Mail:
    reader = Subscriber(id=3, email=READER, email_hash="0" * 64, timezone="Europe/Paris")
    entries = [(Event(payload=e), subs_for(e, discreet=discreet)) for e in events]
    return render_digest(R, reader, entries, frequency="daily", now=datetime.now(UTC))


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def visible(markup: str) -> str:
    """What a reader of the HTML part sees: tags gone, entities decoded, spaces collapsed."""
    markup = re.sub(r"<(style|title)[^>]*>.*?</\1>", " ", markup, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def squash(text: str) -> str:
    return " ".join(text.split())


def line_facts(line: ChangeLine) -> list[str]:
    return [line.label] + [v for v in (line.old, line.new) if v]


def check_wire(data: bytes) -> None:
    assert re.search(rb"(?<!\r)\n", data) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", data) is None, "bare CR"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def check_headers(data: bytes, mail: Mail) -> EmailMessage:
    msg = parse(data)
    for name in REQUIRED:
        assert msg[name], f"{name} missing"
    assert msg["From"] == R.settings.mail_from
    assert msg["To"] == mail.to
    assert MSGID.match(msg["Message-ID"])
    assert abs((parsedate_to_datetime(msg["Date"]) - datetime.now(UTC)).total_seconds()) < 600
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # Literal on the wire (no RFC 2047 words): that is what Gmail and Yahoo read.
    raw = re.search(rb"^List-Unsubscribe: (.*)$", data, re.M)
    assert raw is not None
    assert re.fullmatch(rb"<" + PUBLIC_URL.encode() + rb"/v1/unsubscribe/[\w.-]+>\r", raw.group(1))
    return msg


# -- the real records -------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(EVENTS)))
def test_alerts_from_real_records_parse_and_both_parts_carry_the_same_facts(index: int) -> None:
    event = EVENTS[index]
    mail = alert(event)
    data = to_bytes(R.settings, mail)
    check_wire(data)
    msg = check_headers(data, mail)
    assert msg.defects == []
    assert msg.get_content_type() == "multipart/alternative"
    text_part, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    assert text_part.get_content().replace("\r\n", "\n") == mail.text
    assert html_part.get_content().replace("\r\n", "\n") == mail.html
    text, shown = squash(mail.text), visible(mail.html)
    summary = summarize(event)
    facts = [event["nct_id"], squash(event["study"]["brief_title"])]
    if event["change_kind"] != "new_study":  # a new study's mail opens with its own line
        facts.append(summary.headline)
    facts += [fact for line in summary.lines for fact in line_facts(line)]
    title = shorten(event["study"]["brief_title"], NAME_MAX)  # how the reasons name a study
    facts += [match_reason(s.kind, s.label, event, title=title) for s in subs_for(event)]
    for fact in facts:
        assert squash(fact) in text, fact
        assert squash(fact) in shown, fact
    # Every link of one part is in the other: study, each unsubscribe, manage.
    text_links = set(re.findall(r"https?://\S+", mail.text))
    html_links = set(re.findall(r'href="([^"]+)"', mail.html))
    assert text_links == {html.unescape(link) for link in html_links}
    assert len([u for u in text_links if "/v1/unsubscribe/" in u]) == len(subs_for(event))
    assert any("/v1/manage/" in u for u in text_links)
    # No external assets, no tracking: nothing is fetched when the mail is opened.
    assert re.search(r"<img|<link|<script|url\(|@import", mail.html, re.I) is None


def test_digest_from_real_records_carries_every_item_in_both_parts() -> None:
    events = [e for e in EVENTS if e["change_kind"] != "new_study"][:12]
    mail = digest(events)
    data = to_bytes(R.settings, mail)
    check_wire(data)
    msg = check_headers(data, mail)
    assert msg.defects == []
    text, shown = squash(mail.text), visible(mail.html)
    for number, event in enumerate(events, start=1):
        for fact in (event["nct_id"], squash(event["study"]["brief_title"])):
            assert fact in text
            assert fact in shown
        assert f"{number}. " in text
        assert f"{number}. " in shown
    assert text.count("Stop alerts for") == shown.count("Stop alerts for") == len(events)


def test_html_escapes_a_title_with_script() -> None:
    event = json.loads(json.dumps(EVENTS[1]))
    event["study"]["brief_title"] = '<script>alert("x")</script> & <b>Bold</b> "quoted"'
    event["changes"][0]["new"] = "<img src=x onerror=alert(1)>"
    for mail in (alert(event), digest([event])):
        assert "<script>" not in mail.html
        assert "<img" not in mail.html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;" in mail.html
        assert '<script>alert("x")</script> & <b>Bold</b>' in mail.text  # text is not HTML
        assert "<script>" not in parse(to_bytes(R.settings, mail)).get_body(("html",)).get_content()  # type: ignore[union-attr]


def header_block(data: bytes) -> dict[str, str]:
    """The top-level headers, unfolded, read straight off the wire bytes."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields = re.split(r"\r\n(?![ \t])", head)
    return {f.split(":", 1)[0]: f.split(":", 1)[1].replace("\r\n", "").strip() for f in fields}


# ~10 ms a message in the stdlib's email package: 10,000 need more than the default timeout.
@pytest.mark.timeout(400)
def test_ten_thousand_messages_have_distinct_ids_and_every_header() -> None:
    ids: set[str] = set()
    for i in range(10_000):
        event = EVENTS[i % len(EVENTS)]
        mail = alert(event, discreet=i % 3 == 0, to=f"reader{i}@example.org")
        data = to_bytes(R.settings, mail)
        head = header_block(data)
        for name in REQUIRED:
            assert head.get(name), f"{name} missing in message {i}"
        assert head["To"] == f"reader{i}@example.org"
        assert head["Auto-Submitted"] == "auto-generated"
        assert head["List-Unsubscribe"].startswith(f"<{PUBLIC_URL}/v1/unsubscribe/")
        assert MSGID.match(head["Message-ID"])
        ids.add(head["Message-ID"])
        if i % 250 == 0:
            check_wire(data)
            check_headers(data, mail)
    assert len(ids) == 10_000


def test_pathological_values_keep_crlf_and_short_lines() -> None:
    event = json.loads(json.dumps(EVENTS[1]))
    event["study"]["brief_title"] = "Ü" * 3000 + "x" * 5000
    event["changes"].append(
        {"path": "protocolSection.statusModule.whyStopped", "op": "add", "new": "y" * 4000}
    )
    event["study"]["conditions"] = ["z" * 2000]
    for mail in (alert(event), digest([event, EVENTS[0]])):
        data = to_bytes(R.settings, mail)
        check_wire(data)
        msg = check_headers(data, mail)
        assert len(msg["Subject"]) <= 200


header_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300
) | st.sampled_from(
    ["x\r\nBcc: victim@example.org", "a\nb", "a\rb", "a\u2028b", "a\x85b", "\x00", "=?utf-8?q?x?="]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=header_text, why=header_text, label=header_text, discreet=st.booleans())
def test_subject_never_carries_cr_or_lf(title: str, why: str, label: str, discreet: bool) -> None:
    event = json.loads(json.dumps(EVENTS[1]))
    event["study"]["brief_title"] = title or "t"
    event["changes"] = [
        {"path": "protocolSection.statusModule.whyStopped", "op": "add", "new": why},
        *event["changes"],
    ]
    sub = subscription(9, "condition", label or "l", discreet=discreet)
    mail = render_alert(R, event, subscriber_id=1, email=READER, subscriptions=[sub])
    data = to_bytes(R.settings, mail)
    check_wire(data)
    head = BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    subject = head["Subject"]
    assert "\r" not in subject
    assert "\n" not in subject
    assert set(head.keys()) == {
        *REQUIRED,
        "MIME-Version",
        "Content-Type",
    }, "a header was injected"


# -- discreet mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(0, len(EVENTS), 3))
def test_discreet_mode_hides_condition_and_study_in_subject_and_preheader(index: int) -> None:
    event = EVENTS[index]
    for mail in (alert(event, discreet=True), digest([event], discreet=True)):
        preheader = PREHEADER.search(mail.html)
        assert preheader is not None
        seen = f"{mail.subject} {html.unescape(preheader.group(1))}".casefold()
        secrets = [event["nct_id"], event["study"]["brief_title"][:30]]
        secrets += [s.label for s in subs_for(event)] + list(event["study"]["conditions"])
        secrets += [STATUS_LABELS[event["study"]["overall_status"]]]
        for secret in secrets:
            assert secret.casefold() not in seen, secret
        # The body, behind the lock screen, still tells everything.
        assert event["nct_id"] in mail.text


def test_status_change_subject_names_the_new_status_unless_discreet() -> None:
    event = next(e for e in EVENTS if e["change_kind"] == "status_changed")
    new = STATUS_LABELS[event["study"]["overall_status"]]
    assert new in alert(event).subject
    assert event["nct_id"] in alert(event).subject
    assert new not in alert(event, discreet=True).subject
    assert alert(event, discreet=True).subject == "Update on a study you follow"


# -- through the real send path ---------------------------------------------------------------


async def post(client: TestClient[Any, Any], event: dict[str, Any]) -> None:
    body = json.dumps(event).encode()
    signature = header_value(body, EVENT_SECRETS[0], int(time.time()))
    response = await client.post(
        "/v1/events",
        data=body,
        headers={"Content-Type": "application/json", "Notifier-Signature": signature},
    )
    assert response.status == 202, await response.text()


async def follow(r: Resources, email_address: str, nct: str, *, discreet: bool) -> None:
    async with r.sessions.begin() as session:
        subscriber = Subscriber(email=email_address, email_hash=r.email_hash(email_address))
        session.add(subscriber)
        await session.flush()
        session.add(
            Subscription(
                subscriber_id=subscriber.id,
                kind="study",
                match_key=f"study:{nct}",
                label=nct,
                status="confirmed",
                discreet=discreet,
                confirmed_at=datetime.now(UTC),
            )
        )


async def test_status_change_mails_and_verification_date_change_does_not(
    resources: Resources, client: TestClient[Any, Any], smtp: RecordingSMTP
) -> None:
    record = RECORDS["NCT05378763"]  # SUSPENDED, with a reason
    await follow(resources, "open@example.org", "NCT05378763", discreet=False)
    await follow(resources, "private@example.org", "NCT05378763", discreet=True)
    verified = build_event(
        record, "study_updated", previous=earlier_version(record, statusVerifiedDate="2025-01")
    )
    await post(client, verified)
    await run_worker(resources)
    assert smtp.messages == []
    async with resources.sessions() as session:
        assert await session.scalar(select(Event.status)) == "immaterial"
    status = build_event(
        record,
        "status_changed",
        previous=earlier_version(record, overallStatus="RECRUITING", whyStopped=None),
    )
    await post(client, status)
    await run_worker(resources)
    subjects = {m.rcpt_to: m.message["Subject"] for m in smtp.messages}
    assert "Recruiting → Suspended" in subjects["open@example.org"]
    assert subjects["private@example.org"] == "Update on a study you follow"
    for received in smtp.messages:
        check_wire(received.data)
        body = received.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "Why it stopped: The study has not enrolled any patients." in body
