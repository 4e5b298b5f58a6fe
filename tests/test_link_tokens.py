"""Issue 18, finding 10: unsubscribe pages hand out no manage link, the links in mails can be
withdrawn per subscriber, and token payloads show no sequential ids. Links in mails already
sent (plain ids in their payload) keep working until their subscriber withdraws them."""

from __future__ import annotations

import _hashlib
import base64
import hmac
import json
import re
from typing import Any
from urllib.parse import urlsplit

import time_machine
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from notifier.core.tokens import TokenInvalid, Tokens
from notifier.data.models import Subscription
from notifier.resources import Resources
from tests.conftest import PUBLIC_URL, run_worker
from tests.factories import make_subscription
from tests.smtp_server import RecordingSMTP

ADA = "ada@example.org"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def payload(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return data


async def _subs(resources: Resources, n: int = 2) -> list[Subscription]:
    async with resources.sessions.begin() as session:
        return [
            await make_subscription(session, resources, email=ADA, label=f"NCT0587997{i}")
            for i in range(n)
        ]


def test_token_payloads_show_no_ids(resources: Resources) -> None:
    tokens = resources.tokens
    for make, read in (
        (tokens.unsubscribe, tokens.read_unsubscribe),
        (tokens.manage, tokens.read_manage),
    ):
        for value in (1, 2, 41, 2**63 - 1):
            token = make(value)
            sealed = payload(token)
            assert set(sealed) == {"p"}
            assert isinstance(sealed["p"], str)
            assert len(sealed["p"]) == 22  # 16 bytes, whatever the id
            assert read(token) == value
    neighbours = [payload(tokens.unsubscribe(i))["p"] for i in (1, 2, 3)]
    assert len({s[:4] for s in neighbours}) == 3  # neighbours look nothing alike
    assert "s" not in payload(tokens.confirm(7, "n" * 32))
    assert tokens.read_confirm(tokens.confirm(7, "n" * 32)) == (7, "n" * 32)
    tampered = payload(tokens.unsubscribe(5))["p"][:-2] + "AA"
    try:
        tokens.ids.open(tampered)
    except TokenInvalid:
        pass
    else:
        raise AssertionError("a damaged sealed id opened")


async def test_tokens_in_mails_already_sent_keep_working(
    client: TestClient[Any, Any], resources: Resources
) -> None:
    """Payloads with plain ids ({"u": 12}, {"s": 3}) were mailed before ids were sealed."""
    first, _ = await _subs(resources)
    legacy_manage = resources.tokens.dumps("manage", {"s": first.subscriber_id})
    assert (await client.get(f"/v1/manage/{legacy_manage}")).status == 200
    legacy = resources.tokens.dumps("unsubscribe", {"u": first.id})
    resp = await client.post(f"/v1/unsubscribe/{legacy}", data=ONE_CLICK)
    assert resp.status == 200
    async with resources.sessions() as session:
        assert (
            await session.scalar(select(Subscription.status).where(Subscription.id == first.id))
            == "unsubscribed"
        )


async def test_unsubscribe_pages_offer_a_manage_link_by_mail_only(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    # Two alerts: after one ends, the other is still there to manage (with nothing left, the
    # page offers the way back to the site instead: tests/test_titles_and_meanings.py).
    sub, _other = await _subs(resources, 2)
    token = resources.tokens.unsubscribe(sub.id)
    for resp in (
        await client.get(f"/v1/unsubscribe/{token}"),
        await client.post(f"/v1/unsubscribe/{token}", data=ONE_CLICK),
    ):
        page = await resp.text()
        assert "/v1/manage/" not in page
        assert 'action="/v1/manage"' in page
        assert f'name="unsubscribe_token" value="{token}"' in page
    # The button: a manage link goes to the address, not to whoever holds the page.
    resp = await client.post(
        "/v1/manage", data={"unsubscribe_token": token}, headers={"Accept": "text/html"}
    )
    assert resp.status == 202
    assert "Check your inbox" in await resp.text()
    await run_worker(resources)
    [mail] = smtp.to(ADA)
    text = mail.message.get_body(("plain",))
    assert text is not None
    assert re.search(rf"{re.escape(PUBLIC_URL)}/v1/manage/\S+", text.get_content())
    # A made-up token is answered the same way, and mails nobody.
    resp = await client.post("/v1/manage", data={"unsubscribe_token": "made-up"})
    assert resp.status == 202
    await run_worker(resources)
    assert len(smtp.messages) == 1


async def test_a_subscriber_can_withdraw_every_link_mailed_so_far(
    client: TestClient[Any, Any], resources: Resources, smtp: RecordingSMTP
) -> None:
    first, second = await _subs(resources)
    manage = f"/v1/manage/{resources.tokens.manage(first.subscriber_id)}"
    unsubscribe = f"/v1/unsubscribe/{resources.tokens.unsubscribe(first.id)}"
    legacy = "/v1/unsubscribe/" + resources.tokens.dumps("unsubscribe", {"u": second.id})
    # Signed a second ago: tokens carry whole seconds, and the revocation's own second is kept.
    import time_machine

    from notifier.clock import utcnow

    with time_machine.travel(utcnow().timestamp() + 2, tick=True):
        resp = await client.post(manage, data={"action": "revoke_links"})
        assert resp.status == 200
        assert "withdrawn" in await resp.text()
        for path in (manage, unsubscribe, legacy):
            for method in ("GET", "POST"):
                answer = await client.request(method, path, data=ONE_CLICK)
                assert answer.status == 410, (method, path)
                assert "withdrawn" in await answer.text()
        resp = await client.post(manage, json={"action": "pause", "subscription": first.id})
        assert resp.status == 410
        async with resources.sessions() as session:
            for sub in (first, second):
                row = await session.get(Subscription, sub.id)
                assert row is not None
                assert (row.status, row.paused) == ("confirmed", False)  # nothing changed
        # A fresh manage link is mailed, and it works.
        await run_worker(resources)
        [mail] = smtp.to(ADA)
        text = mail.message.get_body(("plain",))
        assert text is not None
        link = re.search(rf"{re.escape(PUBLIC_URL)}(/v1/manage/\S+)", text.get_content())
        assert link
        fresh = await client.get(urlsplit(link.group(0)).path)
        assert fresh.status == 200
        assert "NCT05879970" in await fresh.text()


@time_machine.travel("2026-12-06 08:00:00Z", tick=False)
def test_the_fast_link_signer_writes_what_itsdangerous_writes() -> None:
    """Alerts sign their links without the serializer's JSON; the tokens are the same bytes,
    under the newest key of a rotation, and read back by the ordinary path."""
    tokens = Tokens(["old-key-" + "o" * 32, "new-key-" + "n" * 32], 3600)
    for value in (1, 2, 255, 256, 65_537, 2**31 - 1, 2**53 - 1, 2**63 - 1):
        for purpose, sign, read in (
            ("unsubscribe", tokens.unsubscribe, tokens.read_unsubscribe),
            ("manage", tokens.manage, tokens.read_manage),
        ):
            token = sign(value)
            assert token == tokens.dumps(purpose, {"p": tokens.ids.seal(value)})
            assert read(token) == value
    # A token signed under the old key alone still opens under the rotation.
    old = Tokens(["old-key-" + "o" * 32], 3600).unsubscribe(42)
    assert tokens.read_unsubscribe(old) == 42


def test_alert_links_are_itsdangerous_tokens_to_the_byte(monkeypatch: Any) -> None:
    """The links' signer keeps OpenSSL's keyed HMAC and skips itsdangerous' layers: its tokens
    are what a stock itsdangerous serializer writes for the same payload, key and second; the
    same when hmac keeps no OpenSSL object (another Python): the plain hmac.HMAC is used."""
    from itsdangerous import URLSafeTimedSerializer

    import notifier.core.tokens

    keys = ["old-key-" + "o" * 32, "new-key-" + "n" * 32]
    with time_machine.travel(1_800_000_000, tick=False):
        for inner in ("_hmac", "_not_there"):
            monkeypatch.setattr(notifier.core.tokens, "_OPENSSL_HMAC", inner)
            tokens = Tokens(keys, 3600)
            tokens.unsubscribe(1)  # keys the signer's HMAC
            signer = tokens._link_signers["unsubscribe"]
            keyed = type(signer.__dict__["_keyed"])
            assert keyed is (hmac.HMAC if inner == "_not_there" else _hashlib.HMAC), keyed
            assert type(tokens.ids._keyed) is keyed
            for value in (1, 65_537, 2**63 - 1):
                sealed = tokens.ids.seal(value)
                for purpose, sign in (
                    ("unsubscribe", tokens.unsubscribe),
                    ("manage", tokens.manage),
                ):
                    stock = URLSafeTimedSerializer(keys, salt=f"notifier.{purpose}")
                    assert sign(value) == stock.dumps({"p": sealed})
                    assert stock.loads(sign(value)) == {"p": sealed}
