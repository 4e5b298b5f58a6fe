"""Signed link tokens: one salt per purpose, a key list for rotation (newest last)."""

from __future__ import annotations

from typing import Any

from itsdangerous import (
    BadSignature,
    SignatureExpired,
    Signer,
    TimestampSigner,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode


class TokenInvalid(Exception):
    """Tampered, wrong purpose or malformed: answer 404."""


class TokenExpired(Exception):
    """Genuine but too old: answer 410 with a way to start again."""


# unsubscribe_list: a mail's List-Unsubscribe, ending every subscription the mail was sent for;
# resubscribe: undo an unsubscribe from its answer page, within RESUBSCRIBE_MAX_AGE.
PURPOSES = ("confirm", "unsubscribe", "manage", "unsubscribe_list", "resubscribe")
RESUBSCRIBE_MAX_AGE = 86400
MAX_LIST = 100  # subscriptions one List-Unsubscribe may end (a mail names a handful)


class _Signer(TimestampSigner):
    """itsdangerous derives the key (an HMAC over the salt) on every call; it depends only on
    the key, so it is kept. Every mail of a fan-out signs two links: this halves their cost."""

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        cache: dict[Any, bytes] = self.__dict__.setdefault("_derived", {})
        if secret_key not in cache:
            cache[secret_key] = super().derive_key(secret_key)
        return cache[secret_key]


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


class Tokens:
    def __init__(self, keys: list[str], confirm_max_age: int) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self.confirm_max_age = confirm_max_age
        # itsdangerous signs with the last key and accepts every key in the list.
        self._serializers = {
            purpose: _Serializer(keys, salt=f"notifier.{purpose}") for purpose in PURPOSES
        }

    def dumps(self, purpose: str, payload: dict[str, Any]) -> str:
        token = self._serializers[purpose].dumps(payload)
        return token if isinstance(token, str) else token.decode()

    def loads(self, purpose: str, token: str, max_age: int | None = None) -> dict[str, Any]:
        try:
            payload = self._serializers[purpose].loads(token, max_age=max_age)
        except SignatureExpired as exc:
            raise TokenExpired(str(exc)) from exc
        except BadSignature as exc:
            raise TokenInvalid(str(exc)) from exc
        if not isinstance(payload, dict):
            raise TokenInvalid("unexpected payload")
        return payload

    def confirm(self, subscriber_id: int, nonce: str) -> str:
        return self.dumps("confirm", {"s": subscriber_id, "n": nonce})

    def read_confirm(self, token: str) -> tuple[int, str]:
        payload = self.loads("confirm", token, max_age=self.confirm_max_age)
        return _int(payload.get("s")), str(payload.get("n", ""))

    def unsubscribe(self, subscription_id: int) -> str:
        # Unsubscribe links must keep working for months: no max_age.
        return self.dumps("unsubscribe", {"u": subscription_id})

    def read_unsubscribe(self, token: str) -> int:
        return _int(self.loads("unsubscribe", token).get("u"))

    def manage(self, subscriber_id: int) -> str:
        return self.dumps("manage", {"s": subscriber_id})

    def read_manage(self, token: str) -> int:
        return _int(self.loads("manage", token).get("s"))

    def unsubscribe_list(self, subscription_ids: list[int]) -> str:
        # Like unsubscribe links, a mail's List-Unsubscribe must keep working: no max_age.
        return self.dumps("unsubscribe_list", {"l": list(subscription_ids)[:MAX_LIST]})

    def read_unsubscribe_list(self, token: str) -> list[int]:
        ids = self.loads("unsubscribe_list", token).get("l")
        if not isinstance(ids, list) or not 0 < len(ids) <= MAX_LIST:
            raise TokenInvalid("unexpected payload")
        return [_int(i) for i in ids]

    def resubscribe(self, subscription_id: int, unsubscribed_at: int) -> str:
        """Undo the unsubscribe made at `unsubscribed_at` (unix seconds): that one only."""
        return self.dumps("resubscribe", {"u": subscription_id, "t": unsubscribed_at})

    def read_resubscribe(self, token: str) -> tuple[int, int]:
        payload = self.loads("resubscribe", token, max_age=RESUBSCRIBE_MAX_AGE)
        return _int(payload.get("u")), _int(payload.get("t"))


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenInvalid("unexpected payload")
    return value
