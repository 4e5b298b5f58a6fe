"""notifier.mime writes what the stdlib parser reads back, for every header and body shape."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.mail.message import Mail, header_safe, to_bytes
from notifier.settings import Settings

SETTINGS = Settings(
    env="dev",
    public_url="https://notify.example.org",
    mail_from="Études cliniques — alertes <alerts@notify.example.org>",
)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    assert html is not None
    return text.get_content(), html.get_content()


def test_round_trip_of_a_typical_alert() -> None:
    mail = Mail(
        to="patient@example.org",
        subject="Recruiting → Active, not recruiting: BI 764532 in small cell lung cancer",
        text="What changed:\n  Recruiting → Active, not recruiting\n" + "long line " * 60 + "\n",
        html="<p>Recruiting &rarr; Active</p>\n<p>" + "é" * 500 + "</p>\n",
        unsubscribe_url="https://notify.example.org/v1/unsubscribe/" + "t" * 150,
    )
    data = to_bytes(SETTINGS, mail, msgid="<abc@notify.example.org>")
    msg = parse(data)
    assert msg.defects == []
    assert msg["Subject"] == mail.subject
    assert msg["From"].addresses[0].display_name == "Études cliniques — alertes"
    assert msg["To"] == "patient@example.org"
    assert msg["Message-ID"] == "<abc@notify.example.org>"
    assert msg["List-Unsubscribe"] == f"<{mail.unsubscribe_url}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Date"].datetime is not None
    text, html = parts(msg)
    assert text.replace("\r\n", "\n") == mail.text
    assert html.replace("\r\n", "\n") == mail.html
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only


@settings(max_examples=200, deadline=None)
@given(
    subject=st.text(min_size=0, max_size=400),
    text=st.text(max_size=2000),
    html=st.text(max_size=2000),
)
def test_any_subject_and_body_round_trip_without_injection(
    subject: str, text: str, html: str
) -> None:
    data = to_bytes(SETTINGS, Mail(to="a@example.org", subject=subject, text=text, html=html))
    msg = parse(data)
    # One header block: exactly the headers we wrote, whatever the subject held.
    names = [name.lower() for name in msg]
    assert names.count("subject") == 1
    assert names.count("bcc") == 0
    assert "\n" not in msg["Subject"]
    assert "\r" not in msg["Subject"]
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    got_text, got_html = parts(msg)
    normal = text.replace("\r\n", "\n").replace("\r", "\n")
    assert got_text.replace("\r\n", "\n") == normal
    assert got_html.replace("\r\n", "\n") == html.replace("\r\n", "\n").replace("\r", "\n")


def aiosmtplib_payload(message: bytes) -> bytes:
    """What aiosmtplib's execute_data_command writes after DATA, by its own code."""
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@settings(max_examples=500)
@given(
    st.lists(
        st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"From x", b" ", b"\r\n.\r\n"]),
        max_size=30,
    ).map(b"".join)
)
def test_the_data_payload_is_what_aiosmtplib_would_send(message: bytes) -> None:
    """notifier.mailer writes DATA itself (without two regular expressions per message): the
    bytes on the wire must stay exactly aiosmtplib's, dot-stuffing and line endings included."""
    from notifier.mailer import data_payload

    assert data_payload(message) == aiosmtplib_payload(message)


def test_a_real_alert_goes_on_the_wire_as_aiosmtplib_would_send_it() -> None:
    from notifier.mailer import data_payload

    mail = Mail(
        to="ada@example.org",
        subject="A line\nthat starts with a dot",
        text=".hidden\n..two\nend.\n.",
        html="<p>.x</p>",
    )
    data = to_bytes(SETTINGS, mail, msgid="<x@notify.example.org>")
    assert data_payload(data) == aiosmtplib_payload(data)


LINE_PIECES = [b"\r\n", b".", b"..", b"a", b"From x", b" ", b"=", b"\r\n.\r\n", "é".encode()]


@settings(max_examples=300)
@given(
    text=st.lists(st.sampled_from(LINE_PIECES), max_size=40).map(b"".join),
    html=st.lists(st.sampled_from(LINE_PIECES), max_size=40).map(b"".join),
    subject=st.text(max_size=120),
)
def test_a_stuffed_build_is_the_data_payload_of_the_plain_one(
    text: bytes, html: bytes, subject: str
) -> None:
    """build_encoded(stuffed=True) stuffs only the headers and the quoted-printable part: what
    it writes must be the DATA payload of the same message, whatever the text (lines that
    start with dots, a lone dot, a subject folded over lines), and unstuff back to it."""
    from notifier.mail import mime
    from notifier.mailer import data_payload

    headers = [
        ("Subject", mime.encode_header_value("Subject", header_safe(subject))),
        ("To", "ada@example.org"),
    ]
    text_part = mime.qp_body(text.decode())
    html_part = mime.base64_body(html.decode())
    plain = mime.build_encoded(headers, text_part, html_part, boundary="=_b")
    stuffed = mime.build_encoded(headers, text_part, html_part, boundary="=_b", stuffed=True)
    assert isinstance(stuffed, mime.Stuffed)
    assert stuffed == data_payload(plain) == aiosmtplib_payload(plain)
    assert data_payload(stuffed) is stuffed  # the sender takes it as it is
    assert stuffed.unstuffed() == plain


def test_unstuffing_gives_back_the_message_whatever_its_dots() -> None:
    from notifier.mail import mime
    from notifier.mailer import data_payload

    for message in (b".\r\n", b"..a\r\n", b"a\r\n.\r\n..\r\n", b"x\r\n", b"...\r\n.b\r\n"):
        stuffed = mime.Stuffed(data_payload(message))
        assert stuffed.unstuffed() == message


@settings(max_examples=500)
@given(
    value=st.text(
        alphabet=st.sampled_from(list("ab@.:/ \t\r\n\x00\x7f\x85\u2028é<>=?")), max_size=40
    ),
    limit=st.integers(5, 60),
)
def test_header_safe_takes_a_shortcut_only_where_cleaning_changes_nothing(
    value: str, limit: int
) -> None:
    """header_safe returns an address or a URL as it is (two per mail of a fan-out): the
    shortcut must give what the whole cleaning gives."""
    import re

    cleaned = " ".join(re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]+", " ", value).split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    assert header_safe(value, limit) == cleaned
