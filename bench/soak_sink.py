"""The soak's SMTP server, in a process of its own: tests/smtp_server.py's aiosmtpd recorder, but
it keeps one line per message in a file (recipient, Message-ID, what the mail is, the link the
soak follows) instead of the message, so a day of mail costs no memory."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import sys
from email.message import EmailMessage
from typing import IO

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.smtp_server import RecordingSMTP

_MSGID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)
_TAG = re.compile(rb"\[soak (\d+)\]")  # the soak puts it in each event's study title
_CONFIRM = re.compile(r"/v1/confirm/([A-Za-z0-9_.\-]+)")
_UNSUBSCRIBE = re.compile(rb"/v1/unsubscribe/([A-Za-z0-9_.\-]+)")
_DIGEST = re.compile(rb"^Subject: Your (daily|weekly) summary", re.MULTILINE)


def describe(data: bytes) -> tuple[str, str, str]:
    """(Message-ID, kind, token): kind is `alert:<n>`, `digest`, `confirm` or `other`."""
    found = _MSGID.search(data)
    msgid = found.group(1).decode(errors="replace") if found else "-"
    if b"/v1/confirm/" in data:  # quoted-printable may fold the link: read the decoded text
        message = email.message_from_bytes(data, policy=email.policy.default)
        body = message.get_body(("plain",))
        text = body.get_content() if isinstance(body, EmailMessage) else ""
        confirm = _CONFIRM.search(text)
        return msgid, "confirm", confirm.group(1) if confirm else "-"
    unsubscribe = _UNSUBSCRIBE.search(data)
    token = unsubscribe.group(1).decode() if unsubscribe else "-"
    if (tag := _TAG.search(data)) is not None and not _DIGEST.search(data):
        return msgid, f"alert:{tag.group(1).decode()}", token
    return msgid, "digest" if _DIGEST.search(data) else "other", token


class LoggingSMTP(RecordingSMTP):
    """Accepts everything, writes `rcpt<TAB>msgid<TAB>kind<TAB>token` per message."""

    out: IO[str] | None = None

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        assert self.out is not None
        msgid, kind, token = describe(envelope.original_content or b"")
        for rcpt in envelope.rcpt_tos:
            self.out.write(f"{rcpt}\t{msgid}\t{kind}\t{token}\n")
        return "250 2.0.0 Message accepted"


async def serve(port: int, path: str) -> None:
    smtp = LoggingSMTP(port=port)
    with open(path, "a", buffering=1) as out:  # line-buffered: the soak reads it as it grows
        smtp.out = out
        await smtp.start()
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
