"""Signed link tokens: one salt per purpose, a key list for rotation (newest last)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from itsdangerous import (
    BadSignature,
    SignatureExpired,
    Signer,
    TimestampSigner,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode, int_to_bytes, want_bytes


class TokenInvalid(Exception):
    """Tampered, wrong purpose or malformed: answer 404."""


class TokenExpired(Exception):
    """Genuine but too old: answer 410 with a way to start again."""


# unsubscribe_list: a mail's List-Unsubscribe, ending every subscription the mail was sent for;
# resubscribe: undo an unsubscribe from its answer page, within RESUBSCRIBE_MAX_AGE.
PURPOSES = ("confirm", "unsubscribe", "manage", "unsubscribe_list", "resubscribe")
RESUBSCRIBE_MAX_AGE = 86400
MAX_LIST = 100  # subscriptions one List-Unsubscribe may end (a mail names a handful)


_OPENSSL_HMAC = "_hmac"  # where hmac.HMAC keeps OpenSSL's object (CPython 3.11, 3.12)


class _Mac(Protocol):
    """A keyed HMAC: hmac.HMAC, or the OpenSSL object inside it."""

    def copy(self) -> _Mac: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _keyed(key: bytes, digestmod: Any) -> _Mac:
    """An HMAC keyed once, to copy for each message. hmac.HMAC wraps OpenSSL's HMAC in Python
    (its copy, update and digest are a Python call each over the C one, ~0.5 µs a signature of
    the three every alert link takes); the C object, when hmac has one, does the same alone."""
    mac = hmac.new(key, digestmod=digestmod)
    inner: _Mac | None = getattr(mac, _OPENSSL_HMAC, None)
    return inner if inner is not None else mac


class _Signer(TimestampSigner):
    """itsdangerous derives the key (an HMAC over the salt) on every call, and keys a new HMAC
    for every signature; both depend only on the key, so they are kept (an HMAC's keyed state
    copied costs half of keying it again). Every mail of a fan-out signs two links.

    SHA-1 as itsdangerous' default, named directly: its default is a Python function calling
    hashlib.sha1, and hmac takes OpenSSL's HMAC only for hashlib's own constructors."""

    default_digest_method = staticmethod(hashlib.sha1)

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        cache: dict[Any, bytes] = self.__dict__.setdefault("_derived", {})
        if secret_key not in cache:
            cache[secret_key] = super().derive_key(secret_key)
        return cache[secret_key]

    def sign(self, value: str | bytes) -> bytes:
        """TimestampSigner.sign, with the timestamp's encoding kept for the second it names
        (a fan-out signs thousands of links a second, each encoding the same one)."""
        now = self.get_timestamp()
        stamp: tuple[int, bytes, bytes] | None = self.__dict__.get("_stamp")
        if stamp is None or stamp[0] != now:
            sep = want_bytes(self.sep)
            stamp = (now, sep + base64_encode(int_to_bytes(now)), sep)
            self.__dict__["_stamp"] = stamp
        signed = want_bytes(value) + stamp[1]
        return signed + stamp[2] + self.get_signature(signed)

    def get_signature(self, value: str | bytes) -> bytes:
        # Signer.get_signature with the default algorithm (HMAC with digest_method), keyed
        # with the newest key (verify_signature tries every key, through derive_key).
        base: _Mac | None = self.__dict__.get("_keyed")
        if base is None:
            base = self.__dict__["_keyed"] = _keyed(self.derive_key(), self.digest_method)
        mac = base.copy()
        mac.update(want_bytes(value))
        return _b64(mac.digest())


class _Serializer(URLSafeTimedSerializer):
    default_signer = _Signer

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        if salt is not None:
            return super().make_signer(salt)
        cached: Signer | None = self.__dict__.get("_signer")
        if cached is None:
            cached = super().make_signer()
            self.__dict__["_signer"] = cached
        return cached

    def dump_payload(self, obj: Any) -> bytes:
        # Our payloads are a few ids: zlib never makes them shorter, so do not try (loads still
        # reads compressed tokens).
        return base64_encode(self.serializer.dumps(obj, **self.serializer_kwargs).encode())


class IdCipher:
    """Ids in tokens, sealed: a deterministic authenticated encryption of a 63-bit id (SIV with
    HMAC-SHA256 as the PRF: the IV is a MAC of the id, the id is XORed with a pad derived from
    the IV). Token payloads are readable base64, so a plain id would show how many subscribers
    there are and let anyone guess neighbours'; a sealed one says nothing.

    Keyed by a key that outlives rotation (NOTIFIER_EMAIL_HASH_KEY, else the oldest signing
    key), so tokens signed under any key in the list still open."""

    def __init__(self, key: str) -> None:
        derived = hmac.new(key.encode(), b"notifier.token-ids", hashlib.sha256).digest()
        self._keyed = _keyed(derived, hashlib.sha256)

    def _prf(self, label: bytes, data: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(label + data)
        return mac.digest()[:8]

    def seal(self, value: int) -> str:
        return self.seal_bytes(value).decode()

    def seal_bytes(self, value: int) -> bytes:
        """seal(), as ASCII bytes."""
        raw = value.to_bytes(8, "big")
        iv = self._prf(b"iv", raw)
        sealed = _xor(raw, self._prf(b"pad", iv))
        return base64.urlsafe_b64encode(iv + sealed)[:22]  # 16 bytes: 22 characters and "=="

    def open(self, text: object) -> int:
        if not isinstance(text, str) or len(text) != 22:
            raise TokenInvalid("unexpected payload")
        try:
            data = base64.urlsafe_b64decode(text + "==")
        except (ValueError, binascii.Error):
            raise TokenInvalid("unexpected payload") from None
        iv, sealed = data[:8], data[8:]
        raw = _xor(sealed, self._prf(b"pad", iv))
        if not hmac.compare_digest(self._prf(b"iv", raw), iv):
            raise TokenInvalid("unexpected payload")
        return int.from_bytes(raw, "big")


@dataclass(frozen=True)
class Link:
    """What an unsubscribe or manage token stands for, and when it was signed (a subscriber
    may have revoked every link signed before some moment)."""

    id: int
    signed_at: datetime


class Tokens:
    def __init__(self, keys: list[str], confirm_max_age: int, id_key: str | None = None) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self.confirm_max_age = confirm_max_age
        self.ids = IdCipher(id_key or keys[0])
        # itsdangerous signs with the last key and accepts every key in the list.
        self._serializers = {
            purpose: _Serializer(keys, salt=f"notifier.{purpose}") for purpose in PURPOSES
        }
        # Each alert's two links sign with these, without the serializer's lookups.
        self._link_signers = {
            purpose: self._serializers[purpose].make_signer()
            for purpose in ("unsubscribe", "manage")
        }

    def dumps(self, purpose: str, payload: dict[str, Any]) -> str:
        token = self._serializers[purpose].dumps(payload)
        return token if isinstance(token, str) else token.decode()

    def _sealed_id(self, purpose: str, value: int) -> str:
        """dumps(purpose, {"p": sealed id}) byte for byte, without the serializer's JSON and
        lookups: the two links of every alert (tests/test_link_tokens.py compares them)."""
        payload = _b64(b'{"p":"' + self.ids.seal_bytes(value) + b'"}')
        return self._link_signers[purpose].sign(payload).decode()

    def loads(self, purpose: str, token: str, max_age: int | None = None) -> dict[str, Any]:
        return self.loads_signed(purpose, token, max_age)[0]

    def loads_signed(
        self, purpose: str, token: str, max_age: int | None = None
    ) -> tuple[dict[str, Any], datetime]:
        try:
            payload, signed_at = self._serializers[purpose].loads(
                token, max_age=max_age, return_timestamp=True
            )
        except SignatureExpired as exc:
            raise TokenExpired(str(exc)) from exc
        except BadSignature as exc:
            raise TokenInvalid(str(exc)) from exc
        if not isinstance(payload, dict):
            raise TokenInvalid("unexpected payload")
        return payload, signed_at

    def _id(self, payload: dict[str, Any], legacy: str) -> int:
        """The sealed id ("p"), or the plain id of a token signed before ids were sealed: those
        are in mails already sent, and keep working (they are signed, so cannot be forged; and
        a revocation refuses them like any other token signed before it)."""
        if "p" in payload:
            return self.ids.open(payload["p"])
        return _int(payload.get(legacy))

    def confirm(self, subscriber_id: int, nonce: str) -> str:
        return self.dumps("confirm", {"p": self.ids.seal(subscriber_id), "n": nonce})

    def read_confirm(self, token: str) -> tuple[int, str]:
        payload = self.loads("confirm", token, max_age=self.confirm_max_age)
        return self._id(payload, "s"), str(payload.get("n", ""))

    def unsubscribe(self, subscription_id: int) -> str:
        # Unsubscribe links must keep working for months: no max_age (revocable instead).
        return self._sealed_id("unsubscribe", subscription_id)

    def read_unsubscribe(self, token: str) -> int:
        return self.read_unsubscribe_link(token).id

    def read_unsubscribe_link(self, token: str) -> Link:
        payload, signed_at = self.loads_signed("unsubscribe", token)
        return Link(self._id(payload, "u"), signed_at)

    def manage(self, subscriber_id: int) -> str:
        return self._sealed_id("manage", subscriber_id)

    def read_manage(self, token: str) -> int:
        return self.read_manage_link(token).id

    def read_manage_link(self, token: str) -> Link:
        payload, signed_at = self.loads_signed("manage", token)
        return Link(self._id(payload, "s"), signed_at)

    def unsubscribe_list(self, subscription_ids: list[int]) -> str:
        # Like unsubscribe links, a mail's List-Unsubscribe must keep working: no max_age.
        sealed = [self.ids.seal(i) for i in list(subscription_ids)[:MAX_LIST]]
        return self.dumps("unsubscribe_list", {"l": sealed})

    def read_unsubscribe_any(self, token: str) -> tuple[list[int], datetime]:
        """What an unsubscribe token ends, and when it was signed: one subscription (a link in
        a mail's body) or every one the mail was sent for (its List-Unsubscribe header)."""
        try:
            link = self.read_unsubscribe_link(token)
            return [link.id], link.signed_at
        except TokenInvalid:
            pass
        payload, signed_at = self.loads_signed("unsubscribe_list", token)
        ids = payload.get("l")
        if not isinstance(ids, list) or not 0 < len(ids) <= MAX_LIST:
            raise TokenInvalid("unexpected payload")
        return [self.ids.open(i) for i in ids], signed_at

    def resubscribe(self, subscription_id: int, unsubscribed_at: int) -> str:
        """Undo the unsubscribe made at `unsubscribed_at` (unix seconds): that one only."""
        return self.dumps(
            "resubscribe", {"p": self.ids.seal(subscription_id), "t": unsubscribed_at}
        )

    def read_resubscribe(self, token: str) -> tuple[int, int]:
        payload = self.loads("resubscribe", token, max_age=RESUBSCRIBE_MAX_AGE)
        return self._id(payload, "u"), _int(payload.get("t"))


def revoked(link: Link, revoked_at: datetime | None) -> bool:
    """Signed before the subscriber revoked their links. Tokens carry whole seconds: one signed
    in the second of the revocation survives it (the fresh link mailed right after must)."""
    return revoked_at is not None and link.signed_at < revoked_at.replace(microsecond=0)


def _b64(data: bytes) -> bytes:
    """itsdangerous' base64_encode for bytes: URL-safe, without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _xor(a: bytes, b: bytes) -> bytes:
    """Two 8-byte strings XORed."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(8, "big")


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenInvalid("unexpected payload")
    return value
