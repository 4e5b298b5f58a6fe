"""Signed link tokens: one salt per purpose, a key list for rotation (newest last)."""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer


class TokenInvalid(Exception):
    """Tampered, wrong purpose or malformed: answer 404."""


class TokenExpired(Exception):
    """Genuine but too old: answer 410 with a way to start again."""


PURPOSES = ("confirm", "unsubscribe", "manage")


class Tokens:
    def __init__(self, keys: list[str], confirm_max_age: int) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self.confirm_max_age = confirm_max_age
        # itsdangerous signs with the last key and accepts every key in the list.
        self._serializers = {
            purpose: URLSafeTimedSerializer(keys, salt=f"notifier.{purpose}")
            for purpose in PURPOSES
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


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenInvalid("unexpected payload")
    return value
