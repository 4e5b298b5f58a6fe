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
import re
import time
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr

CRLF = b"\r\n"


class Stuffed(bytes):
    """A message in the form SMTP's DATA sends it (RFC 5321 4.5.2): CRLF line ends, every line
    that began with "." dot-stuffed, then the terminator CRLF.CRLF. build_encoded(stuffed=True)
    writes it in the same pass as the message, so the sender need not scan it again."""

    def unstuffed(self) -> bytes:
        """The message itself (for a path that stuffs for itself, such as aiosmtplib's)."""
        body = bytes(self[:-3]).replace(b"\r\n..", b"\r\n.")
        return body[1:] if body.startswith(b"..") else body


def stuff(part: bytes) -> bytes:
    """Dot-stuff a piece of a message that starts a line (RFC 5321 4.5.2)."""
    if part.startswith(b"."):
        part = b"." + part
    return part.replace(b"\r\n.", b"\r\n..")


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
    data = _lf(text).encode("utf-8")
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    # The CRLF before a boundary line belongs to the boundary (RFC 2046), so one is always added.
    return encoded.replace(b"\n", CRLF) + CRLF


def base64_body(text: str) -> bytes:
    """UTF-8, base64 in 76-character lines, CRLF line ends, then the delimiter CRLF.

    Used for the HTML part: the C codec is several times faster than quoted-printable on
    markup, and no one reads an HTML part's source in a mail client.
    """
    data = _lf(text).encode("utf-8")
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
    return build_encoded(headers, qp_body(text), base64_body(html), boundary=boundary)


def build_encoded(
    headers: list[tuple[str, str]],
    text_part: bytes,
    html_part: bytes,
    *,
    boundary: str | None = None,
    stuffed: bool = False,
) -> bytes:
    """build() with both bodies already encoded (qp_body, base64_body or a Holes.fill).

    `stuffed`: the message as DATA sends it (a Stuffed), for the price of stuffing the
    headers and the quoted-printable part: the base64 part, the boundary lines and the part
    headers never hold a line that starts with "." (tests/test_mime.py holds it)."""
    b = boundary or f"=_{os.urandom(12).hex()}"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("ascii")
    if stuffed:
        head, text_part = stuff(head), stuff(text_part)
    data = b"".join(
        (
            head,
            b"MIME-Version: 1.0\r\n",
            f'Content-Type: multipart/alternative; boundary="{b}"\r\n\r\n'.encode("ascii"),
            f"--{b}\r\n".encode("ascii"),
            b'Content-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            text_part,
            f"--{b}\r\n".encode("ascii"),
            b'Content-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            html_part,
            f"--{b}--\r\n".encode("ascii"),
            b".\r\n" if stuffed else b"",
        )
    )
    return Stuffed(data) if stuffed else data


# Characters quoted-printable writes as themselves wherever they stand (not "=", space or tab,
# nothing over 126): a link made of these fills its hole without moving a soft line break.
# (bytes.translate deletes them from a link, in C: what is left would be escaped.)
_QP_LITERAL = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;%"
)
_B64_LINE = 57  # input bytes per 76-character base64 line
_NONZERO = re.compile(rb"[^\x00]+")


class Split:
    """A text cut at its placeholders, left to right where each stands: the one rule both the
    whole path (AlertRenderer's Mail) and the holes follow, so they give the same bytes."""

    def __init__(self, text: str, placeholders: list[str]) -> None:
        pattern = re.compile("|".join(re.escape(p) for p in placeholders))
        index = {p: i for i, p in enumerate(placeholders)}
        self.pieces: list[str] = []  # the text around the placeholders
        self.order: list[int] = []  # which placeholder stood between each two pieces
        last = 0
        for found in pattern.finditer(text) if placeholders else ():
            self.pieces.append(text[last : found.start()])
            self.order.append(index[found.group()])
            last = found.end()
        self.pieces.append(text[last:])

    def fill(self, values: list[str]) -> str:
        """The text with placeholder i replaced by values[i] wherever it stood."""
        out = [self.pieces[0]]
        for piece, i in zip(self.pieces[1:], self.order, strict=True):
            out += (values[i], piece)
        return "".join(out)


class Holes:
    """A body rendered once with holes where each recipient's links go, and encoded once; a
    recipient's part is then the cached encoding with their links spliced in, byte for byte
    what qp_body/base64_body write for the filled-in text (tests/test_render_once.py).

    `fill` answers None when a link does not fit (another length than the holes were made
    for, a character the encoding would escape): the caller then encodes the whole body."""

    def __init__(self, text: str, placeholders: list[str], lengths: list[int]) -> None:
        self.lengths = lengths
        self.split = Split(text, placeholders)
        self.pieces, self.order = self.split.pieces, self.split.order

    def filled(self, filler: str) -> str:
        """The text with every hole full of `filler`."""
        return self.split.fill([filler * n for n in self.lengths])

    def fits(self, links: list[bytes]) -> bool:
        return [len(link) for link in links] == self.lengths and all(
            link.isascii() for link in links
        )

    def fill(self, links: list[bytes]) -> bytes | None:
        raise NotImplementedError


class QuotedPrintableHoles(Holes):
    """Quoted-printable writes link characters as themselves, so with links of the lengths it
    was made for, every soft line break stays where it is and the links' bytes land at fixed
    offsets: found by encoding the body filled with "a"s and with "b"s and comparing."""

    def __init__(self, text: str, placeholders: list[str], lengths: list[int]) -> None:
        super().__init__(text, placeholders, lengths)
        a, b = qp_body(self.filled("a")), qp_body(self.filled("b"))
        self.encoded = a
        self.ok = len(a) == len(b)
        self.spans: list[tuple[int, int]] = []
        if self.ok:  # the runs of bytes where the two differ, found in C (a XOR b)
            xor = (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")
            self.spans = [m.span() for m in _NONZERO.finditer(xor)]
            self.ok = sum(e - s for s, e in self.spans) == sum(lengths[i] for i in self.order)

    def fill(self, links: list[bytes]) -> bytes | None:
        if not self.ok or not self.fits(links):
            return None
        # Quoted-printable escapes a "." that starts a line and ends it: no link ends so.
        if any(link.translate(None, _QP_LITERAL) or link.endswith(b".") for link in links):
            return None
        flat = b"".join(links[i] for i in self.order)
        out: list[bytes] = []
        last = used = 0
        for start, end in self.spans:
            out += (self.encoded[last:start], flat[used : used + end - start])
            used += end - start
            last = end
        out.append(self.encoded[last:])
        return b"".join(out)


class Base64Holes(Holes):
    """Base64 re-encodes only the 57-byte input lines (one 76-character line each) that a
    link touches; every other line is the cached encoding's."""

    def __init__(self, text: str, placeholders: list[str], lengths: list[int]) -> None:
        super().__init__(text, placeholders, lengths)
        raw = _lf(self.filled("a")).encode()
        self.encoded = base64_body(self.filled("a"))
        # Where each link's bytes go, by input line: {line: [(offset, end offset in the line,
        # link, first byte, end byte)]}, lines in order; a link across lines is cut in pieces.
        cuts: dict[int, list[tuple[int, int, int, int, int]]] = {}
        at = 0
        for piece, i in zip(self.pieces, self.order, strict=False):
            at += len(_lf(piece).encode())
            done = 0
            while done < lengths[i]:
                line, offset = divmod(at + done, _B64_LINE)
                take = min(lengths[i] - done, _B64_LINE - offset)
                cuts.setdefault(line, []).append((offset, offset + take, i, done, done + take))
                done += take
            at += lengths[i]
        # As fill() goes: where each touched line's encoding starts and ends in the cached
        # encoding (76 characters and CRLF a whole line), its input bytes, and its cuts.
        self.lines: list[tuple[int, int, bytes, list[tuple[int, int, int, int, int]]]] = []
        for line, line_cuts in cuts.items():
            chunk = raw[line * _B64_LINE : (line + 1) * _B64_LINE]
            start = line * (_B64_LINE // 3 * 4 + 2)
            end = start + -(-len(chunk) // 3) * 4 + 2
            self.lines.append((start, end, chunk, line_cuts))

    def fill(self, links: list[bytes]) -> bytes | None:
        if not self.fits(links):
            return None
        out: list[bytes] = []
        last = 0
        encoded = self.encoded
        for start, end, raw, cuts in self.lines:
            chunk = bytearray(raw)
            for offset, stop, i, first, last_byte in cuts:
                chunk[offset:stop] = links[i][first:last_byte]
            out += (encoded[last:start], binascii.b2a_base64(chunk, newline=False), CRLF)
            last = end
        out.append(encoded[last:])
        return b"".join(out)


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
