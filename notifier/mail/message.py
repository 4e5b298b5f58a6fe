"""Pure mail building: (subject, text, html, headers) -> RFC 5322 bytes with CRLF line ends."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formatdate
from functools import lru_cache
from typing import Any

from notifier.mail import mime
from notifier.settings import Settings

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
SUBJECT_MAX = 200
# Written as given: the stdlib would turn a URL longer than a folded line into RFC 2047 encoded
# words, which mail providers do not decode in List-Unsubscribe (the one-click button vanishes).
_VERBATIM = frozenset({"list-unsubscribe", "list-unsubscribe-post", "list-id", "message-id"})


class _MailPolicy(EmailPolicy):
    def fold(self, name: str, value: Any) -> str:
        if name.lower() in _VERBATIM and str(value).isascii():
            return f"{name}: {value}{self.linesep}"
        folded: str = super().fold(name, value)
        return folded

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in _VERBATIM and str(value).isascii():
            return f"{name}: {value}{self.linesep}".encode("ascii")
        folded: bytes = super().fold_binary(name, value)
        return folded


SMTP = _MailPolicy(linesep="\r\n")  # the stdlib's SMTP policy, with the exception above
# For an address that is not ASCII: the message goes out with SMTPUTF8, and its headers carry
# UTF-8 as is (RFC 6532); RFC 2047 encoded words are not allowed inside an address.
SMTPUTF8 = SMTP.clone(utf8=True)


def header_safe(value: str, limit: int = SUBJECT_MAX) -> str:
    """No CR, LF, NUL, Unicode line breaks or other controls can reach a header; bounded length."""
    if len(value) <= limit and value.isascii() and value.isprintable() and " " not in value:
        return value  # an address, a URL: nothing to clean (two per mail of a fan-out)
    cleaned = " ".join(_UNSAFE.sub(" ", value).split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str
    unsubscribe_url: str | None = None  # List-Unsubscribe (RFC 8058 one-click when set)
    headers: dict[str, str] = field(default_factory=dict)


def message_id(settings: Settings) -> str:
    return f"<{os.urandom(16).hex()}@{settings.mail_domain}>"


def build_message(settings: Settings, mail: Mail, *, msgid: str | None = None) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = settings.mail_from
    msg["To"] = header_safe(mail.to, 320)
    msg["Subject"] = header_safe(mail.subject)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = msgid or message_id(settings)
    msg["Auto-Submitted"] = "auto-generated"
    msg["List-Id"] = header_safe(settings.list_id)
    if mail.unsubscribe_url:
        msg["List-Unsubscribe"] = f"<{header_safe(mail.unsubscribe_url, 900)}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in mail.headers.items():
        msg[header_safe(name, 60)] = header_safe(value, 900)
    msg.set_content(mail.text)
    msg.add_alternative(mail.html, subtype="html")
    return msg


def to_bytes(settings: Settings, mail: Mail, *, msgid: str | None = None) -> bytes:
    """The wire form: CRLF line ends, no line over 998 octets (quoted-printable bodies).

    Built by notifier.mime (tens of microseconds) rather than EmailMessage (milliseconds);
    an address that is not ASCII (SMTPUTF8) still takes the stdlib path.
    """
    to = header_safe(mail.to, 320)
    if not to.isascii():
        return build_message(settings, mail, msgid=msgid).as_bytes(policy=SMTPUTF8)
    return mime.build_encoded(
        _headers(settings, to, mail, msgid), mime.qp_body(mail.text), mime.base64_body(mail.html)
    )


def encoded_to_bytes(
    settings: Settings,
    mail: Mail,
    parts: tuple[bytes, bytes],
    *,
    msgid: str | None = None,
    stuffed: bool = False,
) -> bytes | None:
    """to_bytes() for a mail whose text and HTML parts are already encoded (mime.Holes): the
    same bytes, or None for an address that is not ASCII (to_bytes takes the stdlib path).
    `stuffed`: as DATA sends them (mime.Stuffed)."""
    to = header_safe(mail.to, 320)
    if not to.isascii():
        return None
    return mime.build_encoded(_headers(settings, to, mail, msgid), *parts, stuffed=stuffed)


def _headers(settings: Settings, to: str, mail: Mail, msgid: str | None) -> list[tuple[str, str]]:
    headers = [
        ("From", _from_header(settings.mail_from)),
        ("To", to),
        ("Subject", _subject(mail.subject)),
        ("Date", mime.rfc_date()),
        ("Message-ID", msgid or message_id(settings)),
        ("Auto-Submitted", "auto-generated"),
        ("List-Id", _list_id(settings.list_id)),
    ]
    if mail.unsubscribe_url:
        headers.append(("List-Unsubscribe", f"<{header_safe(mail.unsubscribe_url, 900)}>"))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    for name, value in mail.headers.items():
        safe_name = "".join(ch for ch in header_safe(name, 60) if ch.isalnum() or ch == "-")
        if safe_name:
            headers.append(
                (safe_name, mime.encode_header_value(safe_name, header_safe(value, 900)))
            )
    return headers


@lru_cache(maxsize=8)
def _from_header(mail_from: str) -> str:
    return mime.encode_address(header_safe(mail_from, 320))


@lru_cache(maxsize=256)
def _subject(subject: str) -> str:
    """A variant's subject is the same for each of its recipients: cleaned and encoded once."""
    return mime.encode_header_value("Subject", header_safe(subject))


@lru_cache(maxsize=8)
def _list_id(list_id: str) -> str:
    value = header_safe(list_id)
    return value if value.isascii() else mime.encode_header_value("List-Id", value)


def sender_address(settings: Settings) -> str:
    """The envelope sender: the address part of NOTIFIER_MAIL_FROM."""
    from email.utils import parseaddr

    return parseaddr(settings.mail_from)[1] or "alerts@localhost"
