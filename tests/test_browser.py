"""The website's side in a real browser: Debian's Chromium, headless, driven by Playwright.

Sign up on the dev demo page (with and without JavaScript), confirm from the mailed link, get an
alert, unsubscribe from it, undo that; every page a person can reach is checked on a
phone-sized screen (our own checks, then axe-core: no serious or critical violation), and
its screenshot and axe report are saved to test-artifacts/.

As in `make run` opened at 127.0.0.1: the browser uses http://127.0.0.1:PORT while
NOTIFIER_PUBLIC_URL (mailed links) and the allowed origin are http://localhost:PORT.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from axe_playwright_python.async_playwright import Axe
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
from tests.factories import make_subscription
from tests.smtp_server import RecordingSMTP
from tests.test_subscriptions import (  # noqa: F401  # `resources` is a fixture override
    resources_closing_limits,
)

pytestmark = pytest.mark.postgres_only

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SHOTS = ARTIFACTS / "screenshots"
AXE_REPORTS = ARTIFACTS / "axe"
AXE = Axe()
BLOCKING = ("serious", "critical")
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
def public(port: int) -> str:
    return f"http://localhost:{port}"


@pytest.fixture
def settings_overrides(public: str) -> dict[str, Any]:
    # dev mode serves the demo pages. NOTIFIER_PUBLIC_URL names the same server by another
    # address than the browser's (issue 17: the no-JS answer redirected there and the demo
    # page's CSP blocked it).
    return {"env": "dev", "public_url": public, "allowed_origins": [public]}


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

    def __init__(
        self, context: BrowserContext, page: Page, base: str, name: str, *, js: bool = True
    ) -> None:
        self.context, self.page, self.base, self.name, self.js = context, page, base, name, js
        self.requested: list[str] = []
        self.shots: list[Path] = []
        self.axed: list[str] = []
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
        await self.axe(label)
        await self.shot(label)

    async def axe(self, label: str) -> None:
        """axe-core over the page: the report saved, no serious or critical violation.

        axe runs asynchronously in the page, which a context without JavaScript cannot do: there
        the very HTML this person got is served again, at its URL, to a page that runs it."""
        if self.js:
            report = (await AXE.run(self.page)).response
        else:
            html, url = await self.page.content(), self.page.url
            context = await self.context.browser.new_context(viewport=PHONE)  # type: ignore[union-attr]
            try:
                copy = await context.new_page()
                await copy.route(
                    url, lambda route: route.fulfill(body=html, content_type="text/html")
                )
                await copy.goto(url)
                report = (await AXE.run(copy)).response
            finally:
                await context.close()
        AXE_REPORTS.mkdir(parents=True, exist_ok=True)
        path = AXE_REPORTS / f"{self.name}-{label}.json"
        path.write_text(json.dumps(report, indent=1), encoding="utf-8")
        blocking = [
            f"{v['id']} ({v['impact']}): {v['help']} — {[n['html'] for n in v['nodes']][:3]}"
            for v in report["violations"]
            if v["impact"] in BLOCKING
        ]
        assert blocking == [], f"{label}: {blocking}"
        assert report["testEngine"]["name"] == "axe-core"
        self.axed.append(label)


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
    return Session(context, await context.new_page(), base, name, js=js)


def link(smtp: RecordingSMTP, to: str, pattern: str) -> str:
    text = smtp.to(to)[-1].message.get_body(("plain",))
    assert text is not None
    match = re.search(pattern, text.get_content())
    assert match, text.get_content()
    return match.group(0)


def opened_at(url: str, public: str, base: str) -> str:
    """A mailed link (on NOTIFIER_PUBLIC_URL) opened where this person reaches the server."""
    assert url.startswith(public), url
    return base + url.removeprefix(public)


def assert_screenshots(shots: list[Path]) -> None:
    for path in shots:
        data = path.read_bytes()
        assert data.startswith(PNG), path
        assert len(data) > 1000, path


async def test_sign_up_for_a_study_and_its_condition_confirm_alert_unsubscribe_undo_with_js(
    browser: Browser,
    server: TestServer,
    base: str,
    public: str,
    resources: Resources,
    smtp: RecordingSMTP,
) -> None:
    s = await open_session(browser, base, "js-flow")
    page = s.page

    await page.goto(f"{base}/demo/site")
    await s.check_page("demo-site")
    await page.get_by_role("link", name=re.compile(NCT)).click()
    await expect(page.get_by_role("heading", level=2)).to_have_text("Get notified about this study")
    await s.check_page("demo-study")
    box = page.get_by_label("Also tell me when new studies for Neuroendocrine Tumors are added")
    await expect(box).to_be_checked()  # the site ticks it
    await page.get_by_label("Your email address").fill(ADA)
    await page.get_by_role("button", name="Get notified").click()
    success = page.locator("[data-notifier-success]")
    await expect(success).to_be_visible()
    await expect(success).to_contain_text("Check your inbox")
    await expect(success).to_be_focused()
    await expect(page.locator("form[data-notifier-form]")).to_be_hidden()  # replaced
    assert page.url == f"{base}/demo/study"  # fetch(), not a navigation
    await s.check_page("signed-up-inline")

    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1  # one mail for the two
    confirm_url = opened_at(
        link(smtp, ADA, re.escape(public) + r"/v1/confirm/[\w.-]+"), public, base
    )
    await page.goto(confirm_url)
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Confirm")
    await expect(page.locator("main")).to_contain_text("Neuroendocrine Tumors")
    await s.check_page("confirm")
    await page.keyboard.press("Enter")  # tab_to_button left the focus on "Confirm"
    await expect(page.get_by_role("heading", level=1)).to_have_text("You're subscribed")
    await expect(page.locator("main")).to_contain_text(NCT)
    await expect(page.locator("main")).to_contain_text("The clinical-trials site will email you")
    await s.check_page("subscribed")
    await page.goto(confirm_url)  # the link again, from the mail
    await expect(page.get_by_role("heading", level=1)).to_have_text("You're already subscribed")
    await s.check_page("already-subscribed")
    await page.get_by_role("link", name="Back to the site").click()
    await expect(page).to_have_url(f"{base}/demo/site")

    result = await post_events(
        f"{base}/v1/events",
        [status_change(NCT, "RECRUITING", "ACTIVE_NOT_RECRUITING")],
        EVENT_SECRETS[0],
    )
    assert result == {"accepted": 1, "duplicates": 0}
    await run_worker(resources)
    alert = smtp.to(ADA)[-1].message
    unsubscribe_url = opened_at(alert["List-Unsubscribe"].strip("<>"), public, base)
    manage_url = opened_at(link(smtp, ADA, re.escape(public) + r"/v1/manage/[\w.-]+"), public, base)

    await page.goto(unsubscribe_url)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribe?")
    await s.check_page("unsubscribe")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("You're unsubscribed")
    await expect(page.locator("main")).to_contain_text("You still get 1 other alert")
    await s.check_page("unsubscribed")
    await page.get_by_role("link", name=re.compile("Re-subscribe to")).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Re-subscribe?")
    await s.check_page("resubscribe")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("You're subscribed again")
    await s.check_page("resubscribed")

    await page.goto(manage_url)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your alerts")
    await s.check_page("manage")
    await page.get_by_role("button", name="Unsubscribe from everything").click()
    await expect(page.locator("main")).to_contain_text("You get no alerts from us now")
    await s.check_page("manage-nothing-left")
    await page.goto(f"{base}/v1/confirm/not-a-real-token")
    await s.check_page("error")

    async with resources.sessions() as session:
        statuses = list(await session.scalars(select(Subscription.status)))
    assert statuses == ["unsubscribed", "unsubscribed"]
    await s.context.close()
    assert_screenshots(s.shots)
    assert len(s.axed) == 13


@pytest.mark.parametrize("demo", ["condition", "study"])
async def test_plain_form_without_javascript_lands_on_check_your_inbox(
    browser: Browser,
    server: TestServer,
    base: str,
    resources: Resources,
    smtp: RecordingSMTP,
    demo: str,
) -> None:
    s = await open_session(browser, base, f"no-js-{demo}", js=False)
    page = s.page
    answers: list[tuple[str, int]] = []
    page.on("response", lambda response: answers.append((response.url, response.status)))

    await page.goto(f"{base}/demo/{demo}")
    await s.check_page(f"demo-{demo}")
    await page.get_by_label("Your email address").fill(ADA)
    if demo == "condition":
        await page.get_by_label("How often").select_option("weekly")
        await page.get_by_role("button", name="Notify me of new studies").click()
    else:
        await page.get_by_label(re.compile("Also tell me")).uncheck()
        await page.get_by_role("button", name="Get notified").click()
    # On this server's own address, whatever NOTIFIER_PUBLIC_URL says.
    await page.wait_for_url(f"{base}/v1/subscriptions/check-inbox")
    assert (f"{base}/v1/subscriptions", 303) in answers
    await expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    await s.check_page("check-inbox")
    await page.get_by_role("link", name="Back to the site").click()
    await expect(page).to_have_url(f"{base}/demo/site")

    await run_worker(resources)
    assert len(smtp.to(ADA)) == 1
    async with resources.sessions() as session:
        subs = list(await session.scalars(select(Subscription)))
    expected = ("condition", "weekly") if demo == "condition" else ("study", "instant")
    assert [(sub.kind, sub.status, sub.frequency) for sub in subs] == [
        (expected[0], "pending", expected[1])
    ]
    await s.context.close()
    assert_screenshots(s.shots)


async def test_an_invalid_address_is_tied_to_its_field_with_javascript(
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
    await expect(error).to_contain_text("Enter an email address like name@example.org")
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(field).to_have_attribute("aria-describedby", "notifier-error-email")
    summary = page.locator("[data-notifier-summary]")
    await expect(summary).to_be_focused()
    await expect(summary).to_contain_text("There is a problem")
    # Its own line above the field, never glued to the input.
    error_box = await error.bounding_box()
    field_box = await field.bounding_box()
    assert error_box is not None
    assert field_box is not None
    assert error_box["y"] + error_box["height"] <= field_box["y"]
    await s.check_page("field-error")
    await summary.get_by_role("link").click()
    await expect(field).to_be_focused()
    await field.fill(ADA)
    await page.get_by_role("button", name="Get notified").click()
    await expect(page.locator("[data-notifier-success]")).to_be_visible()
    await expect(summary).to_have_count(0)
    await s.context.close()
    assert_screenshots(s.shots)


async def test_an_invalid_address_without_javascript_gets_a_page_that_says_what_to_fix(
    browser: Browser, server: TestServer, base: str, resources: Resources
) -> None:
    s = await open_session(browser, base, "invalid-no-js", js=False)
    page = s.page
    await page.goto(f"{base}/demo/study")
    await page.get_by_label("Your email address").fill("ada@example")
    await page.get_by_role("button", name="Get notified").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("There is a problem")
    await expect(page.locator("main")).to_contain_text("Email address")
    await s.check_page("error-422")
    async with resources.sessions() as session:
        assert await session.scalar(select(func.count(Subscriber.id))) == 0
    await s.context.close()


async def test_a_last_unsubscribe_and_an_expired_link_have_pages(
    browser: Browser, server: TestServer, base: str, resources: Resources
) -> None:
    async with resources.sessions.begin() as session:
        sub = await make_subscription(session, resources)
    s = await open_session(browser, base, "states")
    page = s.page
    await page.goto(f"{base}/v1/unsubscribe/{resources.tokens.unsubscribe(sub.id)}")
    await page.get_by_role("button", name="Unsubscribe").click()
    await expect(page.locator("main")).to_contain_text("You get no alerts from us now")
    assert "other alerts" not in await page.locator("main").inner_text()
    await s.check_page("unsubscribed-nothing-left")
    token = resources.tokens.resubscribe(sub.id, 0)  # an undo link for another unsubscribe
    await page.goto(f"{base}/v1/resubscribe/{token}")
    await page.get_by_role("button", name="Re-subscribe").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        "This link can no longer be used"
    )
    await s.check_page("expired")
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
    await expect(page.locator("[data-notifier-success]")).to_contain_text("Check your inbox")
    async with resources.sessions() as session:
        sub = await session.scalar(select(Subscription))
    assert sub is not None
    assert (sub.label, sub.mesh_id) == ("Heart attack", "D000009203")
    await s.context.close()
