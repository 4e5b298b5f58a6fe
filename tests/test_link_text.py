"""Issue 18, finding 9: a condition cannot carry a link or an address into the confirmation mail
(a phishing carrier); the check uses the public suffix list, after NFKC."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from notifier.core.signup_input import looks_like_link

LINKS = [
    "restore access at bit.ly/3xYz or secure-login.co.uk/verify",
    "secure-login.co.uk/verify",
    "Asthma bit\uff0ely/abc",  # fullwidth full stop
    "Asthma bit\u3002ly",  # ideographic full stop
    "write to help\uff20example.org",  # fullwidth at sign
    "\uff57\uff57\uff57\uff0e\uff45\uff56\uff49\uff4c\uff0e\uff43\uff4f\uff4d",  # www.evil.com
    "see covid.care",  # a newer generic TLD the old list of nine did not know
    "login at 203.0.113.9",
    "https://x",
]
CONDITIONS = [
    "Small cell lung cancer",
    "Crohn\u2019s disease (CD)",
    "St.John's wort allergy",
    "e.g. asthma",
    "Type 2 diabetes, 2.5mg",
    "Hepatitis B.C",
    "Ménière's disease",
    "COVID-19",
]


@pytest.mark.parametrize("text", LINKS)
def test_link_like_text_is_found(text: str) -> None:
    assert looks_like_link(text)


@pytest.mark.parametrize("text", CONDITIONS)
def test_conditions_are_not_links(text: str) -> None:
    assert not looks_like_link(text)


@pytest.mark.parametrize("text", LINKS[:5])
async def test_signup_refuses_a_condition_with_a_link(
    client: TestClient[Any, Any], text: str
) -> None:
    resp = await client.post(
        "/v1/subscriptions", json={"email": "ada@example.org", "condition": text}
    )
    assert resp.status == 422
    message = (await resp.json())["fields"]["condition"]
    assert "link" in message
