"""`notifier preview` renders every mail template from the repository's real study records."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from notifier.core.tokens import TokenInvalid, Tokens
from notifier.ops.preview import build_samples, mail_context, mail_templates, preview_settings
from notifier.ops.sample_events import NoRecords
from tests.conftest import SECRET_KEYS, make_settings

ROOT = Path(__file__).resolve().parent.parent


def run_cli(out: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        NOTIFIER_SECRET_KEYS=",".join(SECRET_KEYS),
        NOTIFIER_PUBLIC_URL="https://notify.example.org",
        NOTIFIER_SITE_NAME="Trials Example",
        PYTHONPATH=str(ROOT),
    )
    return subprocess.run(
        [sys.executable, "-m", "notifier", "preview", "--out", str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_writes_every_mail_template_from_real_records(tmp_path: Path) -> None:
    out = tmp_path / "preview"
    # Run from an unrelated folder: the records come from the repository, not the cwd.
    result = run_cli(out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(out / "index.html") in result.stdout
    emls = sorted(out.glob("*.eml"))
    names = {p.stem for p in emls}
    # Every template pair a person can receive has at least one sample.
    for template in mail_templates():
        assert any(n == template or n.startswith(f"{template}-") for n in names), template
    assert {"alert-status_changed", "alert-new_study-discreet", "digest-daily"} <= names
    index = (out / "index.html").read_text()
    for eml in emls:
        msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        assert msg.defects == []
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        assert text is not None
        assert html is not None
        # The .txt and .html files are the very parts of the .eml.
        assert text.get_content().replace("\r\n", "\n") == (out / f"{eml.stem}.txt").read_text()
        assert html.get_content().replace("\r\n", "\n") == (out / f"{eml.stem}.html").read_text()
        assert "Trials Example" in text.get_content()
        assert f"href='{eml.stem}.html'" in index
    assert "<style>" in index  # styled like the service's pages (issue 17)
    assert "<html lang='en'>" in index
    status = (out / "alert-status_changed.txt").read_text()
    assert "Recruiting → Active, not recruiting" in status
    assert "Active, not recruiting — the study has all its participants" in status
    assert "https://clinicaltrials.gov/study/NCT02856893" in status


def test_preview_links_never_work_with_the_real_keys(tmp_path: Path) -> None:
    out = tmp_path / "preview"
    assert run_cli(out, cwd=ROOT).returncode == 0
    text = (out / "alert-status_changed.txt").read_text()
    tokens = re.findall(r"/v1/unsubscribe/([\w.-]+)", text)
    assert tokens
    real = Tokens(SECRET_KEYS, 3600)
    for token in tokens:
        with pytest.raises(TokenInvalid):
            real.read_unsubscribe(token)


def test_samples_cover_templates_and_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    r = mail_context(preview_settings(make_settings("sqlite+aiosqlite://", "smtp://x:1")))
    samples = build_samples(r)
    assert mail_templates() <= {s.template for s in samples}
    assert len({s.name for s in samples}) == len(samples)
    discreet = next(s for s in samples if s.name == "alert-new_study-discreet")
    assert discreet.mail.subject == "A new study matches a condition you follow"
    with pytest.raises(NoRecords, match=str(tmp_path)):
        build_samples(r, tmp_path)
