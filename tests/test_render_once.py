"""Each event renders and encodes once per variant; each recipient's mail is the cached bytes
with their links spliced in, byte for byte what rendering it alone writes."""

from __future__ import annotations

import re
from typing import Any

import pytest
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.mail import alerts, mime
from notifier.mail.alerts import AlertRenderer
from notifier.mail.message import to_bytes
from notifier.ops.preview import mail_context, subscription
from tests.conftest import make_settings
from tests.test_mail_format import EVENTS, subs_for

R = mail_context(make_settings("sqlite+aiosqlite://", "smtp://127.0.0.1:1"))
BOUNDARY = re.compile(rb'boundary="([^"]+)"')
# What a link can hold: the characters of our public URLs and tokens, and a few more.
URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#@!$&'()*+,;%"
HOLE = "@@hole-{}@@"


def same_boundary(data: bytes) -> bytes:
    """The multipart boundary is random per message: name it the same in both to compare."""
    found = BOUNDARY.search(data)
    assert found is not None
    return data.replace(found.group(1), b"BOUNDARY")


def one_by_one(renderer: AlertRenderer, sid: int, email: str, subs: list[Any], msgid: str) -> bytes:
    """A recipient's mail as it was built before the cache: templates filled in, then MIME."""
    mail = renderer.render(subscriber_id=sid, email=email, subscriptions=subs)
    return to_bytes(R.settings, mail, msgid=msgid)


@time_machine.travel("2026-12-06 12:00:00Z", tick=False)
@pytest.mark.parametrize("discreet", [False, True])
def test_every_recipient_gets_the_bytes_rendering_alone_would_write(discreet: bool) -> None:
    recipients = [1, 2, 9, 10, 99, 1000, 123_456, 2**31 + 5, 2**53 - 1]
    compared = 0
    for event in EVENTS:
        renderer, alone = AlertRenderer(R, event), AlertRenderer(R, event)
        subs = subs_for(event, discreet=discreet)
        for variant in (subs[:1], subs):
            for sid in recipients:
                msgid = f"<{sid:032x}@notify.example.org>"
                email = f"reader{sid}@example.org"
                fast = renderer.render_bytes(
                    subscriber_id=sid, email=email, subscriptions=variant, msgid=msgid
                )
                slow = one_by_one(alone, sid, email, variant, msgid)
                assert same_boundary(fast) == same_boundary(slow), (event["event_id"], sid)
                compared += 1
    assert compared >= len(EVENTS) * 2 * len(recipients)


@time_machine.travel("2026-12-06 12:00:00Z", tick=False)
def test_an_address_that_is_not_ascii_takes_the_whole_path_and_gets_the_same_mail() -> None:
    event = EVENTS[0]
    subs = subs_for(event)
    fast = AlertRenderer(R, event).render_bytes(
        subscriber_id=4, email="zoë@exämple.org", subscriptions=subs, msgid="<x@y>"
    )
    slow = one_by_one(AlertRenderer(R, event), 4, "zoë@exämple.org", subs, "<x@y>")
    assert same_boundary(fast) == same_boundary(slow)
    assert "zoë@exämple.org".encode() in fast


def test_templates_run_once_per_variant_for_a_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    real = AlertRenderer._render_templates

    def counted(self: AlertRenderer, subscriptions: Any) -> Any:
        runs.append(len(subscriptions))
        return real(self, subscriptions)

    monkeypatch.setattr(AlertRenderer, "_render_templates", counted)
    event = next(e for e in EVENTS if e["change_kind"] == "new_study")
    renderer = AlertRenderer(R, event)
    study, condition = subs_for(event)
    for sid in range(500):
        # Same kinds and labels, each recipient's own subscription ids.
        mine = [
            subscription(10 * sid, "study", study.label),
            subscription(10 * sid + 1, "condition", condition.label),
        ]
        variant = mine[:1] if sid % 2 else mine
        renderer.render_bytes(
            subscriber_id=sid, email=f"r{sid}@example.org", subscriptions=variant, msgid="<m@x>"
        )
    assert runs == [2, 1]


def test_a_link_of_another_length_or_with_an_escaped_character_is_encoded_whole() -> None:
    text = "Stop: @@hole-0@@\nManage: @@hole-1@@ ." + "x" * 90
    holes = mime.QuotedPrintableHoles(text, [HOLE.format(0), HOLE.format(1)], [10, 12])
    assert holes.fill([b"a" * 10, b"b" * 12]) == mime.qp_body(
        text.replace(HOLE.format(0), "a" * 10).replace(HOLE.format(1), "b" * 12)
    )
    assert holes.fill([b"a" * 11, b"b" * 12]) is None  # another length
    assert holes.fill([b"a=" * 5, b"b" * 12]) is None  # "=" is written =3D
    assert holes.fill([b"a " * 5, b"b" * 12]) is None  # a space may be escaped at a line end
    assert holes.fill([b"a" * 9 + b".", b"b" * 12]) is None  # "." alone on a line is escaped


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.text(max_size=300), min_size=1, max_size=6),
    order=st.lists(st.integers(0, 2), max_size=5),
    lengths=st.lists(st.integers(1, 200), min_size=3, max_size=3),
    data=st.data(),
)
def test_holes_fill_is_the_encoding_of_the_filled_text(
    pieces: list[str], order: list[int], lengths: list[int], data: st.DataObject
) -> None:
    """Any text, links anywhere (mid-line, at a line start, across the 76-character fold and
    the 57-byte base64 lines), any number of times: both encodings as if encoded whole."""
    placeholders = [HOLE.format(i) for i in range(3)]
    text = pieces[0]
    for i, piece in zip(order, pieces[1:], strict=False):
        text += placeholders[i] + piece
    links = [
        data.draw(st.text(alphabet=URL_CHARS, min_size=n, max_size=n)).encode() for n in lengths
    ]
    filled = text
    for placeholder, link in zip(placeholders, links, strict=True):
        filled = filled.replace(placeholder, link.decode())
    text_holes = mime.QuotedPrintableHoles(text, placeholders, lengths)
    html_holes = mime.Base64Holes(text, placeholders, lengths)
    got = text_holes.fill(links)
    if got is not None:  # None: a link the fast path leaves to the whole encoding
        assert got == mime.qp_body(filled)
    else:
        assert any(link.endswith(b".") for link in links) or not text_holes.ok
    assert html_holes.fill(links) == mime.base64_body(filled)


def test_the_cache_stays_bounded() -> None:
    event = EVENTS[0]
    renderer = AlertRenderer(R, event, cache_size=4)
    for i in range(20):
        sub = subscription(i, "condition", f"Condition {i}")
        renderer.render_bytes(
            subscriber_id=i, email="a@example.org", subscriptions=[sub], msgid="<m@x>"
        )
    assert len(renderer._cache) <= 4
    assert (
        alerts.MANAGE_PLACEHOLDER
        not in renderer.render(
            subscriber_id=1,
            email="a@example.org",
            subscriptions=[subscription(1, "study", "NCT01")],
        ).text
    )


@time_machine.travel("2026-12-06 12:00:00Z", tick=False)
def test_many_one_off_variants_keep_few_encodings_and_the_same_bytes() -> None:
    """Followers who each typed another condition: every variant renders, only the first
    ENCODED_VARIANTS seen twice keep encoded parts (memory), and every mail is still the same."""
    event = next(e for e in EVENTS if e["change_kind"] == "new_study")
    renderer, alone = AlertRenderer(R, event), AlertRenderer(R, event)
    for round_ in range(3):
        for i in range(alerts.ENCODED_VARIANTS + 10):
            sid = 100 * i + round_
            sub = subscription(sid, "condition", f"Condition number {i}")
            fast = renderer.render_bytes(
                subscriber_id=sid, email="a@example.org", subscriptions=[sub], msgid="<m@x>"
            )
            slow = one_by_one(alone, sid, "a@example.org", [sub], "<m@x>")
            assert same_boundary(fast) == same_boundary(slow)
    encoded = sum(len(v.encoded) for v in renderer._cache.values())
    assert encoded == alerts.ENCODED_VARIANTS


@time_machine.travel("2026-12-06 12:00:00Z", tick=False)
def test_text_that_looks_like_placeholders_gives_the_same_bytes_both_ways() -> None:
    """The pipeline's own text may hold placeholder-like fragments; both paths replace the
    placeholders left to right where they stand, so the bytes still agree (found in review)."""
    event = dict(EVENTS[0])
    event["study"] = dict(event["study"])
    event["study"]["brief_title"] = (
        "A @@notifier-manage@@notifier-unsubscribe-0@@ trial " + alerts.MANAGE_PLACEHOLDER
    )
    subs = subs_for(event)
    renderer, alone = AlertRenderer(R, event), AlertRenderer(R, event)
    for sid in range(1, 5):
        fast = renderer.render_bytes(
            subscriber_id=sid, email="a@example.org", subscriptions=subs, msgid="<m@x>"
        )
        slow = one_by_one(alone, sid, "a@example.org", subs, "<m@x>")
        assert same_boundary(fast) == same_boundary(slow)


@time_machine.travel("2026-12-06 12:00:00Z", tick=False)
def test_a_stuffed_alert_is_the_data_payload_of_the_plain_one() -> None:
    """The send job asks for its alerts stuffed (mime.Stuffed): for every sample event, from
    the cached parts, exactly what DATA would send for the plain bytes (dot-stuffed lines,
    the terminator), and the whole path's plain bytes where it is taken."""
    from notifier.mailer import data_payload

    compared = 0
    for event in EVENTS:
        stuffed_renderer, plain_renderer = AlertRenderer(R, event), AlertRenderer(R, event)
        subs = subs_for(event)
        for sid in (1, 2, 99, 2**31 + 5):
            for email in (f"reader{sid}@example.org", "zoë@exämple.org"):
                msgid = f"<{sid:032x}@notify.example.org>"
                stuffed = stuffed_renderer.render_bytes(
                    subscriber_id=sid, email=email, subscriptions=subs, msgid=msgid, stuffed=True
                )
                plain = plain_renderer.render_bytes(
                    subscriber_id=sid, email=email, subscriptions=subs, msgid=msgid
                )
                cached = email.isascii() and sid != 1  # a variant's first mail goes whole
                assert isinstance(stuffed, mime.Stuffed) is cached
                assert same_boundary(data_payload(stuffed)) == same_boundary(data_payload(plain))
                compared += cached
    assert compared == len(EVENTS) * 3
