"""The website's side in a real browser: Debian's Chromium, headless, driven by Playwright.

Sign up on the dev demo page (with and without JavaScript), confirm from the mailed link, get an
alert, unsubscribe from it; every page is checked for basic accessibility on a phone-sized
screen and screenshotted to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)
from sqlalchemy import func, select

from notifier.app import create_app
from notifier.data.models import Subscriber, Subscription
from notifier.pipeline import post_events
from notifier.resources import Resources
from tests.conftest import EVENT_SECRETS, run_worker
from tests.events_factory import status_change
from tests.smtp_server import RecordingSMTP
from tests.test_subscriptions import (  # noqa: F401  # `resources` is a fixture override
    resources_closing_limits,
)

pytestmark = pytest.mark.postgres_only

SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE: ViewportSize = {"width": 375, "height": 667}
ADA = "ada@example.org"
NCT = "NCT05879978"
PNG = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def base(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def settings_overrides(base: str) -> dict[str, Any]:
    # dev mode serves the demo pages; mailed links must point at this test server.
    return {"env": "dev", "public_url": base, "allowed_origins": [base]}


@pytest.fixture
async def server(resources: Resources, port: int) -> AsyncIterator[TestServer]:
    app = create_app(resources.settings, resources)
    test_server = TestServer(app, host="127.0.0.1", port=port)
    await test_server.start_server()
    yield test_server
    await test_server.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


class Session:
    """One browser context on a phone-sized screen that records every URL it requests."""

    def __init__(self, context: BrowserContext, page: Page, base: str, name: str) -> None:
        self.context, self.page, self.base, self.name = context, page, base, name
        self.requested: list[str] = []
        self.shots: list[Path] = []
        page.on("request", lambda request: self.requested.append(request.url))

    async def shot(self, label: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{self.name}-{len(self.shots) + 1:02d}-{label}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)

    async def check_page(self, label: str) -> None:
        """Title, lang, labelled fields, named buttons, contrast, no sideways scroll, no
        external assets, a keyboard path to the first button; then a screenshot."""
        page = self.page
        assert (await page.title()).strip(), f"{label}: no <title>"
        assert await page.evaluate("document.documentElement.lang"), f"{label}: no lang"
        assert await page.evaluate(UNLABELLED) == [], label
        assert await page.evaluate(LOW_CONTRAST) == [], label
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{label}: {width}px wide on a 375px screen"
        foreign = [u for u in self.requested if not u.startswith((self.base, "data:"))]
        assert foreign == [], f"{label}: external assets {foreign}"
        if await page.locator("button:visible").count():
            await tab_to_button(page, label)
        await self.shot(label)


async def tab_to_button(page: Page, label: str) -> None:
    """Tab from the top of the page until a button has focus, and see the focus ring."""
    await page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(12):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.tagName") == "BUTTON":
            ring = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert ring != "none", f"{label}: focused button shows no outline"
            return
    raise AssertionError(f"{label}: Tab never reaches a button")


UNLABELLED = """() => {
  const shown = el => el.getClientRects().length > 0
    && !el.closest('[hidden],[aria-hidden="true"]');
  const problems = [];
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden' || !shown(el)) continue;
    const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
      || el.getAttribute('aria-labelledby');
    if (!named) problems.push('unlabelled ' + el.outerHTML);
  }
  for (const el of document.querySelectorAll('button')) {
    if (shown(el) && !(el.textContent.trim() || el.getAttribute('aria-label')))
      problems.push('button without a name ' + el.outerHTML);
  }
  return problems;
}"""

# WCAG AA (4.5:1) for every element that directly holds visible text.
LOW_CONTRAST = """() => {
  const rgb = c => {
    const p = c.match(/rgba?\\(([^)]+)\\)/)[1].split(',').map(parseFloat);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const channel = v => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  const lum = c => 0.2126 * channel(c[0]) + 0.7152 * channel(c[1]) + 0.0722 * channel(c[2]);
  const background = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) return c;
    }
    return [255, 255, 255, 1];
  };
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (!el.getClientRects().length || el.closest('[hidden],[aria-hidden="true"]')) continue;
    if (!Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const style = getComputedStyle(el);
    if (style.clip === 'rect(0px, 0px, 0px, 0px)') continue;  // visually hidden, for readers
    const [a, b] = [lum(rgb(style.color)), lum(background(el))].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    if (ratio < 4.5) out.push(`${el.tagName} ${ratio.toFixed(2)}: ${el.textContent.trim()}`);
  }
  return out;
}"""


async def open_session(browser: Browser, base: str, name: str, *, js: bool = True) -> Session:
    context = await browser.new_context(viewport=PHONE, java_script_enabled=js)
    return Session(context, await context.new_page(), base, name)


def link(smtp: RecordingSMTP, to: str, pattern: str) -> str:
    text = smtp.to(to)[-1].message.get_body(("plain",))
    assert text is not None
    match = re.search(pattern, text.get_content())
    assert match, text.get_content()
    return match.group(0)


def assert_screenshots(shots: list[Path]) -> None:
    for path in shots:
        data = path.read_bytes()
        assert data.startswith(PNG), path
        assert len(data) > 1000, path


async def test_sign_up_confirm_get_an_alert_and_unsubscribe_with_javascript(
    browser: Browser, server: TestServer, base: str, resources: Resources, smtp: RecordingSMTP
) -> None:
    s = await open_session(browser, base, "js-flow")
    page = s.page

    await page.goto(f"{base}/demo/study")
    await s.check_page("demo-study")
    await page.get_by_label("Your email address").fill(ADA)
    await page.get_by_role("button", name="Get notified").click()
    message = page.locator("[data-notifier-message]")
    await expect(message).to_contain_text("check your inbox")
    assert page.url == f"{base}/demo/study"  # fetch(), not a navigation
    await s.shot("signed-up-inline")

    await run_worker(resources)
    confirm_url = link(smtp, ADA, re.escape(base) + r"/v1/confirm/[\w.-]+")
    await page.goto(confirm_url)
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Confirm")
    await s.check_page("confirm")
    await page.keyboard.press("Enter")  # tab_to_button left the focus on "Confirm"
    await expect(page.get_by_role("heading", level=1)).to_have_text("You're subscribed")
    await expect(page.locator("main")).to_contain_text(NCT)
    await s.check_page("subscribed")

    result = await post_events(
        f"{base}/v1/events",
        [status_change(NCT, "RECRUITING", "ACTIVE_NOT_RECRUITING")],
        EVENT_SECRETS[0],
    )
    assert result == {"accepted": 1, "duplicates": 0}
    await run_worker(resources)
    alert = smtp.to(ADA)[-1].message
    unsubscribe_url = alert["List-Unsubscribe"].strip("<>")
    assert unsubscribe_url.startswith(f"{base}/v1/unsubscribe/")
    manage_url = link(smtp, ADA, re.escape(base) + r"/v1/manage/[\w.-]+")

    await page.goto(unsubscribe_url)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribe?")
    await s.check_page("unsubscribe")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("You're unsubscribed")
    await s.check_page("unsubscribed")

    await page.goto(manage_url)
    await expect(page.locator("main")).to_contain_text("unsubscribed")
    await s.check_page("manage")
    await page.goto(f"{base}/v1/confirm/not-a-real-token")
    await s.check_page("error")

    async with resources.sessions() as session:
        statuses = list(await session.scalars(select(Subscription.status)))
    assert statuses == ["unsubscribed"]
    await s.context.close()
    assert_screenshots(s.shots)
    assert len(s.shots) == 8


async def test_plain_form_without_javascript_lands_on_check_your_inbox(
    browser: Browser, server: TestServer, base: str, resources: Resources, smtp: RecordingSMTP
) -> None:
    s = await open_session(browser, base, "no-js", js=False)
    page = s.page
    answers: list[tuple[str, int]] = []
    page.on("response", lambda response: answers.append((response.url, response.status)))

    await page.goto(f"{base}/demo/condition")
    await s.check_page("demo-condition")
    await page.get_by_label("Your email address").fill(ADA)
    await page.get_by_label("How often").select_option("weekly")
    await page.get_by_role("button", name="Notify me of new studies").click()
    await page.wait_for_url(f"{base}/v1/subscriptions/check-inbox")
    assert (f"{base}/v1/subscriptions", 303) in answers
    await expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    await s.check_page("check-inbox")

    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1
    async with resources.sessions() as session:
        sub = await session.scalar(select(Subscription))
    assert sub is not None
    assert (sub.kind, sub.status, sub.frequency) == ("condition", "pending", "weekly")
    await s.context.close()
    assert_screenshots(s.shots)


async def test_invalid_address_shows_an_inline_field_error(
    browser: Browser, server: TestServer, base: str, resources: Resources
) -> None:
    s = await open_session(browser, base, "invalid")
    page = s.page
    await page.goto(f"{base}/demo/study")
    field = page.get_by_label("Your email address")
    # Passes the browser's own type=email check (no dot needed), fails the server's.
    await field.fill("ada@example")
    await page.get_by_role("button", name="Get notified").click()
    error = page.locator('[data-notifier-error="email"]')
    await expect(error).to_be_visible()
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(field).to_have_attribute("aria-describedby", "notifier-error-email")
    await expect(page.locator("[data-notifier-message]")).to_contain_text("check the highlighted")
    await s.check_page("field-error")

    async with resources.sessions() as session:
        assert await session.scalar(select(func.count(Subscriber.id))) == 0
    await s.context.close()
    assert_screenshots(s.shots)


async def test_condition_suggestions_by_keyboard(
    browser: Browser, server: TestServer, base: str, resources: Resources, smtp: RecordingSMTP
) -> None:
    """The condition field is an ARIA combobox fed by GET /v1/conditions: type, arrow down,
    Enter picks (fills mesh_id, does not submit), then the form signs up for that descriptor."""
    s = await open_session(browser, base, "suggest")
    page = s.page
    await page.goto(f"{base}/demo/condition")
    field = page.get_by_role("combobox", name="Condition")
    await field.fill("")
    await field.press_sequentially("heart att")
    listbox = page.get_by_role("listbox")
    await expect(listbox.get_by_role("option").first).to_have_text("Heart attack")
    await field.press("ArrowDown")
    await expect(field).to_have_attribute("aria-activedescendant", re.compile(r"-0$"))
    await field.press("Enter")
    await expect(field).to_have_value("Heart attack")
    await expect(field).to_have_attribute("aria-expanded", "false")
    await s.check_page("suggestion-picked")
    await page.get_by_label("Your email address").fill(ADA)
    await page.get_by_role("button", name="Notify me of new studies").click()
    await expect(page.locator("[data-notifier-message]")).to_contain_text("check your inbox")
    async with resources.sessions() as session:
        sub = await session.scalar(select(Subscription))
    assert sub is not None
    assert (sub.label, sub.mesh_id) == ("Heart attack", "D000009203")
    await s.context.close()
