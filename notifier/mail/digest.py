"""The digest mail: every held alert of one subscriber as numbered items, text and HTML."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from notifier.core.names import subscription_name
from notifier.data.models import Event, Subscriber, SubscriptionView
from notifier.mail.alerts import NEUTRAL_PREHEADER, study_url
from notifier.mail.context import MailContext
from notifier.mail.labels import NAME_MAX, change_date, shorten, status_label, status_meaning
from notifier.mail.message import Mail
from notifier.mail.summaries import match_reason, summarize

PERIOD_WORDS = {"daily": "once a day", "weekly": "once a week"}


def digest_item(
    mail_ctx: MailContext, event: dict[str, Any], subs: Sequence[SubscriptionView]
) -> dict[str, Any]:
    """One event as a digest item: headline, study, changes, and each subscription's reason."""
    summary = summarize(event)
    study = event.get("study") or {}
    # Shortened: the full title heads the mail; the reasons only need to recognise it.
    title = shorten(str(study.get("brief_title") or ""), NAME_MAX) or None
    overall = study.get("overall_status")
    return {
        "headline": summary.headline,
        "lines": summary.lines,
        "nct_id": str(event.get("nct_id") or ""),
        "title": str(study.get("brief_title") or event.get("nct_id") or ""),
        "status": status_label(overall) if overall else "",
        "meaning": status_meaning(overall) if overall else "",
        "changed_on": change_date(event.get("change_kind"), event.get("occurred_on")),
        "study_url": study_url(event),
        "discreet": any(s.discreet for s in subs),
        "reasons": [
            {
                "reason": match_reason(
                    s.kind, s.label, event, mesh_id=s.mesh_id, requires=s.requires, title=title
                ),
                "label": subscription_name(
                    s.kind, s.label, {s.label: title} if title and s.kind == "study" else {}
                ),
                "unsubscribe_url": mail_ctx.unsubscribe_url(s.id),
            }
            for s in subs
        ],
    }


def render_digest(
    mail_ctx: MailContext,
    subscriber: Subscriber,
    entries: Sequence[tuple[Event, Sequence[SubscriptionView]]],
    *,
    frequency: str,
    now: datetime,
) -> Mail:
    items = [digest_item(mail_ctx, event.payload, subs) for event, subs in entries]
    count = len(items)
    updates = f"{count} update{'s' if count != 1 else ''}"
    period = "daily" if frequency != "weekly" else "weekly"
    heading = f"Your {period} trial alerts"
    if any(item["discreet"] for item in items):
        # Lock screens and shared inboxes show subject and preview: name nothing there.
        subject = f"Your {period} summary: {updates} on studies you follow"
        preheader = NEUTRAL_PREHEADER
    else:
        first = items[0]
        more = f" and {count - 1} more" if count > 1 else ""
        subject = f"Your {period} summary: {first['nct_id']} {first['headline']}{more}"
        preheader = "; ".join(f"{i['nct_id']}: {i['headline']}" for i in items)[:200]
    context = {
        "site_name": mail_ctx.settings.site_name,
        "subject": subject,
        "preheader": preheader,
        "heading": heading,
        "intro": f"{updates} on studies you follow since your last summary.",
        "items": items,
        "period_words": PERIOD_WORDS[period],
        "manage_url": mail_ctx.manage_url(subscriber.id),
    }
    # One-click ends every subscription the digest was sent for.
    ids = sorted({s.id for _, subs in entries for s in subs})
    return Mail(
        to=subscriber.email,
        subject=subject,
        text=mail_ctx.templates.get_template("mail/digest.txt").render(context),
        html=mail_ctx.templates.get_template("mail/digest.html").render(context),
        unsubscribe_url=mail_ctx.list_unsubscribe_url(ids),
    )
