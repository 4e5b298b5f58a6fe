"""Fast MIME: a multipart/alternative message written straight to bytes.

The stdlib `email` package spends milliseconds per message parsing and re-folding its own
headers; a fan-out to 100k people cannot afford that. The structure here is fixed and simple
(ASCII headers we produce ourselves, RFC 2047 for a non-ASCII subject or name, a
quoted-printable text part and a base64 HTML part from the C codecs), so it is built directly.
Tests parse every variant back with the stdlib parser (tests/test_mime.py).
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr

CRLF = b"\r\n"


def encode_header_value(name: str, value: str) -> str:
    """ASCII values as they are (if short enough); anything else as folded RFC 2047 words."""
    if value.isascii() and len(name) + len(value) + 2 <= 78:
        return value
    if value.isascii():
        return Header(value, "us-ascii", header_name=name).encode(linesep="\r\n")
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


def encode_address(value: str) -> str:
    """'Name <addr>' with the display name encoded when it is not ASCII."""
    name, addr = parseaddr(value)
    if not name:
        return addr
    return formataddr((name, addr), charset="utf-8")


def qp_body(text: str) -> bytes:
    """UTF-8, quoted-printable, CRLF line ends (every line ≤ 76 octets), then the delimiter CRLF."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    # The CRLF before a boundary line belongs to the boundary (RFC 2046), so one is always added.
    return encoded.replace(b"\n", CRLF) + CRLF


def base64_body(text: str) -> bytes:
    """UTF-8, base64 in 76-character lines, CRLF line ends, then the delimiter CRLF.

    Used for the HTML part: the C codec is several times faster than quoted-printable on
    markup, and no one reads an HTML part's source in a mail client.
    """
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return base64.encodebytes(data).replace(b"\n", CRLF) + CRLF


class _DateCache:
    """RFC 5322 Date, formatted once per second (formatdate costs ~10 µs)."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True)
        return self._value


rfc_date = _DateCache()


def build(
    headers: list[tuple[str, str]], text: str, html: str, *, boundary: str | None = None
) -> bytes:
    """Headers (already safe: no CR/LF, encoded as needed) + text and HTML alternatives."""
    b = boundary or f"=_{os.urandom(12).hex()}"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return b"".join(
        (
            head.encode("ascii"),
            b"MIME-Version: 1.0\r\n",
            f'Content-Type: multipart/alternative; boundary="{b}"\r\n\r\n'.encode("ascii"),
            f"--{b}\r\n".encode("ascii"),
            b'Content-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            qp_body(text),
            f"--{b}\r\n".encode("ascii"),
            b'Content-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            base64_body(html),
            f"--{b}--\r\n".encode("ascii"),
        )
    )
