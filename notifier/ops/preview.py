"""`notifier preview`: every mail rendered from real CT.gov records, written out to look at.

Nothing is sent and no database or Redis is needed. Links are signed with a throwaway key, so
a preview link can never unsubscribe or confirm anyone, whatever the configured secrets are.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifier.clock import utcnow
from notifier.core.confirmation import Item
from notifier.core.tokens import Tokens
from notifier.data.models import Event, Subscriber, Subscription
from notifier.mail.alerts import render_alert
from notifier.mail.context import MailContext
from notifier.mail.digest import render_digest
from notifier.mail.message import Mail, to_bytes
from notifier.mail.notices import manage_link_mail, render_confirmation
from notifier.mail.templates import make_environment
from notifier.ops.sample_events import STUDIES_DIR, load_records, sample_events
from notifier.settings import Settings

READER = "reader@example.org"
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates" / "mail"


@dataclass(frozen=True)
class Sample:
    name: str  # file stem: alert-status_changed, digest-daily, …
    template: str  # the mail template pair it shows: alert, digest, confirm, manage_link
    note: str  # what a reviewer should look for
    mail: Mail


def preview_settings(settings: Settings) -> Settings:
    """The configured look (site name, sender, public URL) with throwaway signing keys."""
    return settings.model_copy(update={"secret_keys": [secrets.token_urlsafe(32)]})


def mail_context(settings: Settings) -> MailContext:
    """What rendering takes, from settings alone: no database, Redis or SMTP."""
    return MailContext(
        settings, make_environment(), Tokens(settings.secret_keys, settings.confirm_max_age)
    )


def subscription(
    sid: int, kind: str, label: str, *, discreet: bool = False, frequency: str = "instant"
) -> Subscription:
    """A subscription as the database would hold it, never stored."""
    return Subscription(
        id=sid,
        subscriber_id=1,
        kind=kind,
        match_key=f"study:{label}" if kind == "study" else f"cond:{label.lower()}",
        label=label,
        mesh_id=None,
        broad=False,
        status="confirmed",
        paused=False,
        frequency=frequency,
        discreet=discreet,
    )


def build_samples(mail_ctx: MailContext, folder: Path = STUDIES_DIR) -> list[Sample]:
    """One sample per interesting mail, from the real records in `folder`."""
    events = sample_events(load_records(folder))
    reader = Subscriber(id=1, email=READER, email_hash="0" * 64, timezone="UTC")
    samples: list[Sample] = []

    def alert(name: str, note: str, event: dict[str, Any], *subs: Subscription) -> None:
        mail = render_alert(
            mail_ctx, event, subscriber_id=1, email=READER, subscriptions=list(subs)
        )
        samples.append(Sample(f"alert-{name}", "alert", note, mail))

    for name, event in events.items():
        if name == "new_study":
            followed = _followed_condition(event)
            alert(
                "new_study",
                "a new study for a condition follower: status, phase, sponsor, why it matched",
                event,
                subscription(2, "condition", followed),
            )
            alert(
                "new_study-discreet",
                "discreet mode: subject and preview name neither condition nor study",
                event,
                subscription(2, "condition", followed, discreet=True),
            )
        else:
            alert(
                name,
                f"{name.replace('_', ' ')}: the change in the subject and first lines",
                event,
                subscription(1, "study", event["nct_id"]),
            )
    first = next(iter(events.values()))
    both = events.get("new_study", first)
    alert(
        "two_subscriptions",
        "one event, two matching subscriptions: one mail, two reasons, two unsubscribe links",
        both,
        subscription(1, "study", both["nct_id"]),
        subscription(2, "condition", str((both["study"]["conditions"] or ["a condition"])[0])),
    )
    entries = [
        (Event(payload=event), [subscription(1, "study", event["nct_id"], frequency="daily")])
        for name, event in events.items()
        if name != "new_study"
    ]
    for frequency in ("daily", "weekly"):
        mail = render_digest(mail_ctx, reader, entries, frequency=frequency, now=utcnow())
        samples.append(Sample(f"digest-{frequency}", "digest", f"{frequency} digest", mail))
    discreet = [
        (e, [subscription(1, "study", e.payload["nct_id"], discreet=True)]) for e, _ in entries
    ]
    mail = render_digest(mail_ctx, reader, discreet, frequency="daily", now=utcnow())
    samples.append(Sample("digest-discreet", "digest", "discreet digest", mail))
    items = [
        Item(
            1,
            "study",
            first["nct_id"],
            None,
            False,
            "instant",
            first["study"]["brief_title"],
            first["study"]["overall_status"],
        ),
        Item(2, "condition", "Neuroendocrine Tumors", "D000018358", True, "weekly"),
    ]
    token = mail_ctx.tokens.confirm(1, secrets.token_hex(8))
    samples.append(
        Sample(
            "confirm",
            "confirm",
            "double opt-in",
            render_confirmation(mail_ctx, READER, items, token),
        )
    )
    samples.append(
        Sample(
            "manage_link",
            "manage_link",
            "preference-centre link",
            manage_link_mail(mail_ctx, READER, reader.id),
        )
    )
    return samples


def _followed_condition(event: dict[str, Any]) -> str:
    """A MeSH term the study is indexed under but does not list: shows a matched-by reason."""
    study = event["study"]
    listed = {c.casefold() for c in study["conditions"]}
    terms = [m["term"] for m in study["condition_mesh"] if m["term"].casefold() not in listed]
    preferred = [t for t in terms if t == "Neuroendocrine Tumors"]
    return str((preferred or terms or study["conditions"] or ["a condition"])[0])


def mail_templates() -> set[str]:
    """Every mail template pair that a person could receive (layouts and macros excluded)."""
    return {
        path.stem for path in TEMPLATES_DIR.glob("*.txt") if not path.stem.startswith(("_", "base"))
    }


# The pages' look (templates/pages/base.html), so the index reads like the rest of the service.
INDEX_STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;"
    "background:#f4f6f8;color:#1a1a1a;line-height:1.5}"
    "main{max-width:64rem;margin:2rem auto;background:#fff;padding:1.5rem;border-radius:8px;"
    "box-shadow:0 1px 3px rgba(0,0,0,.12)}h1{font-size:1.4rem;margin-top:0}"
    "a{color:#0b5cad}table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;padding:.5rem .4rem;border-bottom:1px solid #dde3e8;"
    "vertical-align:top}th{background:#eef2f5}tbody tr:hover{background:#f8fafb}"
    "td:first-child{white-space:nowrap}"
)


def write_preview(mail_ctx: MailContext, out: Path, folder: Path = STUDIES_DIR) -> list[Path]:
    """Write <name>.eml/.txt/.html per sample and an index.html; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    for sample in build_samples(mail_ctx, folder):
        for suffix, data in (
            (".eml", to_bytes(mail_ctx.settings, sample.mail)),
            (".txt", sample.mail.text.encode()),
            (".html", sample.mail.html.encode()),
        ):
            path = out / f"{sample.name}{suffix}"
            path.write_bytes(data)
            written.append(path)
        rows.append(
            f"<tr><td><a href='{sample.name}.html'>{html.escape(sample.name)}</a> · "
            f"<a href='{sample.name}.txt'>text</a> · <a href='{sample.name}.eml'>.eml</a></td>"
            f"<td>{html.escape(sample.mail.subject)}</td><td>{html.escape(sample.note)}</td></tr>"
        )
    index = out / "index.html"
    index.write_text(
        "<!doctype html><html lang='en'><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>notifier mail preview</title><style>{INDEX_STYLE}</style>"
        "<main><h1>notifier mail preview</h1>"
        f"<p>{len(rows)} mails rendered from real ClinicalTrials.gov records. Open one to see "
        "it as a mail client would; <em>text</em> is the plain part, <em>.eml</em> the whole "
        "message.</p><table><thead><tr><th scope='col'>mail</th><th scope='col'>subject</th>"
        "<th scope='col'>look for</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></main>",
        encoding="utf-8",
    )
    written.append(index)
    return written


def run(
    settings: Settings, out: Path, folder: Path = STUDIES_DIR, *, echo: Callable[[str], Any] = print
) -> int:
    files = write_preview(mail_context(preview_settings(settings)), out, folder)
    echo(f"wrote {len(files)} files to {out} (open {out / 'index.html'})")
    return len(files)
