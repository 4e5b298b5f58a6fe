"""The embeddable form's script is served; the demo pages exist in dev mode only."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier.app import create_app
from notifier.resources import Resources


async def test_form_script_is_served(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/static/notifier-form.js")
    assert resp.status == 200
    assert resp.content_type == "application/javascript"
    assert "data-notifier-form" in await resp.text()


async def test_demo_pages_hidden_in_production(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/demo/study")).status == 404


@pytest.mark.parametrize("page", ["/demo/study", "/demo/condition"])
async def test_demo_pages_in_dev(resources: Resources, page: str) -> None:
    dev = resources.settings.model_copy(update={"env": "dev"})
    async with TestClient(TestServer(create_app(dev, replace(resources, settings=dev)))) as c:
        resp = await c.get(page)
        assert resp.status == 200
        html = await resp.text()
        assert 'action="/v1/subscriptions"' in html
        assert 'name="website"' in html  # the honeypot
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_demo_study_page_offers_its_condition_as_a_box_the_site_ticks_or_not(
    resources: Resources,
) -> None:
    dev = resources.settings.model_copy(update={"env": "dev"})
    async with TestClient(TestServer(create_app(dev, replace(resources, settings=dev)))) as c:
        html = await (await c.get("/demo/study")).text()
        assert (
            "Sign up to get updates when this study changes or when new studies for "
            "NEUROENDOCRINE TUMORS are added" in html
        )
        assert (
            '<input type="checkbox" id="nf-condition" name="condition" '
            'value="Neuroendocrine Tumors" checked>' in html
        )
        assert '<label for="nf-condition">' in html
        unticked = await (await c.get("/demo/study?condition=unticked")).text()
        assert 'value="Neuroendocrine Tumors">' in unticked
