"""Small things a new user trips on (issue 17): a port already taken, the favicon, the send-test
footer, a sentence that starts with the default site name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from notifier.mail.templates import make_environment
from notifier.ops.commands import render_test_mail
from notifier.resources import Resources
from tests.conftest import ADMIN_TOKEN, EVENT_SECRETS, REDIS, REDIS_DB, SECRET_KEYS

ROOT = Path(__file__).resolve().parent.parent


def test_a_port_already_taken_is_one_friendly_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
        env.update(
            NOTIFIER_SECRET_KEYS=",".join(SECRET_KEYS),
            NOTIFIER_EVENT_SECRETS=",".join(EVENT_SECRETS),
            NOTIFIER_ADMIN_TOKEN=ADMIN_TOKEN,
            NOTIFIER_REDIS_URL=f"{REDIS}/{REDIS_DB}",
            NOTIFIER_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/n.db",
            PYTHONPATH=str(ROOT),
        )
        result = subprocess.run(
            [sys.executable, "-m", "notifier", "web", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    # One line about it, the last (a warning about a missing mail catcher may come first).
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"notifier: port {port} on 127.0.0.1 is already in use"), last
    assert "pass --port" in last


async def test_pages_have_a_favicon(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/favicon.ico")
    assert resp.status == 200
    assert resp.content_type == "image/svg+xml"
    assert (await resp.read()).startswith(b"<svg")
    page = await (await client.get("/v1/subscriptions/check-inbox")).text()
    assert '<link rel="icon" href="/favicon.ico"' in page


def test_the_send_test_mail_does_not_claim_the_address_asked_for_alerts(
    resources: Resources,
) -> None:
    mail = render_test_mail(resources, "ada@example.org", "<x@y>")
    for body in (mail.text, mail.html):
        assert "asked for clinical-trial alerts" not in body
        assert "nobody" in body


def test_a_sentence_starting_with_the_site_name_starts_with_a_capital() -> None:
    page = make_environment().get_template("pages/confirmed.html")
    html = page.render(site_name="the clinical-trials site", subscriptions=[], home=None)
    assert "The clinical-trials site will email you" in html
    html = page.render(site_name="NHS trials", subscriptions=[], home=None)
    assert "NHS trials will email you" in html
