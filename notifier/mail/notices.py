"""The transactional mails: the double opt-in confirmation and the preference-centre link."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from notifier.mail.context import MailContext
from notifier.mail.message import Mail


def render_confirmation(
    mail_ctx: MailContext, to: str, items: Sequence[object], token: str
) -> Mail:
    settings = mail_ctx.settings
    subject = f"Confirm your clinical-trial alerts from {settings.site_name}"
    context = {
        "site_name": settings.site_name,
        "subject": subject,
        "preheader": "One click to start your alerts. Not you? Ignore this mail.",
        "confirm_url": mail_ctx.confirm_url(token),
        "subscriptions": items,
        "hours": max(1, settings.confirm_max_age // 3600),
        "purge_days": settings.pending_max_age_days,
    }
    text = mail_ctx.templates.get_template("mail/confirm.txt").render(context)
    html = mail_ctx.templates.get_template("mail/confirm.html").render(context)
    # No List-Unsubscribe: this is not a list mail, and nothing follows unless it is confirmed.
    return Mail(to=to, subject=subject, text=text, html=html)


def manage_link_mail(mail_ctx: MailContext, to: str, subscriber_id: int) -> Mail:
    subject = f"Your alert settings at {mail_ctx.settings.site_name}"
    context: dict[str, Any] = {
        "site_name": mail_ctx.settings.site_name,
        "subject": subject,
        "preheader": "A link to see and change the clinical-trial alerts you receive.",
        "manage_url": mail_ctx.manage_url(subscriber_id),
    }
    return Mail(
        to=to,
        subject=subject,
        text=mail_ctx.templates.get_template("mail/manage_link.txt").render(context),
        html=mail_ctx.templates.get_template("mail/manage_link.html").render(context),
    )
