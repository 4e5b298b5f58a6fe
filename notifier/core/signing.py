"""HMAC-SHA256 signatures of event bodies: `Notifier-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HEADER = "Notifier-Signature"
TOLERANCE_SECONDS = 300
MAX_HEADER_CHARS = 4096  # room for a handful of v1= values during a key rotation, no more
HEX_CHARS = frozenset("0123456789abcdef")


class SignatureError(Exception):
    """The request is not provably from the pipeline: answer 401 and store nothing."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<t>." + body` under one secret."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def header_value(body: bytes, secret: str, timestamp: int) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def _ascii_digits(value: str) -> bool:
    # str.isdigit() is true for Arabic-Indic and fullwidth digits too, and int() reads them.
    return value.isascii() and value.isdigit()


def parse(header: str) -> tuple[int, list[str]]:
    """`t=…,v1=…,v1=…` -> (t, [v1, …]); anything else is a SignatureError."""
    if not header or len(header) > MAX_HEADER_CHARS:
        raise SignatureError(f"missing or oversized {HEADER} header")
    timestamps: list[str] = []
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {HEADER} header")
        if key == "t":
            timestamps.append(value.strip())
        elif key == "v1":
            candidates.append(value.strip().lower())
        # Unknown schemes (v0, v2…) are ignored so that a future scheme can be added alongside.
    if len(timestamps) != 1 or not _ascii_digits(timestamps[0]) or len(timestamps[0]) > 12:
        raise SignatureError(f"{HEADER} needs exactly one t=<unix seconds>")
    given = candidates
    candidates = [c for c in candidates if len(c) == 64 and set(c) <= HEX_CHARS]
    if not candidates and given:
        # Say what is wrong with what was sent: "no v1" would send the caller looking for a
        # missing field when it is the value (a truncated or non-hex digest).
        first = given[0]
        what = "not hex" if not set(first) <= HEX_CHARS else f"{len(first)} characters"
        raise SignatureError(
            f"{HEADER} v1 must be 64 hex characters (HMAC-SHA256), got {what}"
            + (f" in all {len(given)} v1 values" if len(given) > 1 else "")
        )
    if not candidates:
        raise SignatureError(f"{HEADER} has no v1=<hex HMAC-SHA256>")
    return int(timestamps[0]), candidates


def check_header(
    header: str, now: float, tolerance: int = TOLERANCE_SECONDS
) -> tuple[int, list[str]]:
    """The checks that need no body: the header's syntax and its timestamp. Run them before
    reading a byte of the body, so a bogus or stale signature costs the server nothing."""
    timestamp, candidates = parse(header)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp outside the {tolerance} s tolerance")
    return timestamp, candidates


class BodyVerifier:
    """The HMAC of a body fed chunk by chunk, so an unauthenticated body never has to be held
    in memory whole; `check()` raises SignatureError unless some v1 matches under some secret."""

    def __init__(self, timestamp: int, candidates: list[str], secrets: Sequence[str]) -> None:
        self.candidates = candidates
        prefix = f"{timestamp}.".encode()
        self._macs = [hmac.new(s.encode(), prefix, hashlib.sha256) for s in secrets]

    def update(self, chunk: bytes) -> None:
        for mac in self._macs:
            mac.update(chunk)

    def check(self) -> None:
        matched = False
        for mac in self._macs:
            expected = mac.hexdigest()
            for candidate in self.candidates:
                # No early return: every comparison runs, each in constant time.
                matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise SignatureError("signature does not match")


def verify(
    header: str,
    body: bytes,
    secrets: Sequence[str],
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Raise SignatureError unless some v1 is the HMAC of this exact body under some secret.

    The timestamp is checked first (cheap) and is part of the signed text, so a captured request
    cannot be replayed after `tolerance` seconds; duplicate deliveries within it are harmless
    because event_id is the idempotency key.
    """
    verifier = BodyVerifier(*check_header(header, now, tolerance), secrets)
    verifier.update(body)
    verifier.check()
