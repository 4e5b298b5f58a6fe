"""One alert mail for one subscriber about one event, naming every subscription that matched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from notifier.core.names import subscription_name
from notifier.data.models import SubscriptionView
from notifier.mail.context import MailContext
from notifier.mail.labels import NAME_MAX, change_date, shorten, status_label, status_meaning
from notifier.mail.message import Mail, encoded_to_bytes, to_bytes
from notifier.mail.mime import Base64Holes, QuotedPrintableHoles, Split
from notifier.mail.summaries import match_reason, summarize

NEUTRAL_STUDY_SUBJECT = "Update on a study you follow"
NEUTRAL_CONDITION_SUBJECT = "A new study matches a condition you follow"
NEUTRAL_PREHEADER = "Open this message to read what changed."
SHORT_TITLE_MAX = 40


def _titles(event: dict[str, Any], sub: SubscriptionView, title: str | None) -> dict[str, str]:
    """The event's title for the followed study (also when followed under an older NCT id)."""
    return {sub.label: title} if title and sub.kind == "study" else {}


def study_url(event: dict[str, Any]) -> str:
    """The study page: the pipeline's URL when it is http(s), else built from the NCT id."""
    url = str((event.get("study") or {}).get("url") or "")
    if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc:
        return url
    return f"https://clinicaltrials.gov/study/{event.get('nct_id', '')}"


def short_title(study: dict[str, Any]) -> str | None:
    """The acronym CT.gov lists (PHINK, TROPION-Lung07), when it is a short name."""
    acronym = " ".join(str(study.get("acronym") or "").split())
    return acronym if 0 < len(acronym) <= SHORT_TITLE_MAX else None


def _subject(
    event: dict[str, Any], headline: str, subscriptions: Sequence[SubscriptionView]
) -> tuple[str, str | None]:
    """(subject, preheader or None for the default); neutral when any subscription is discreet."""
    if any(sub.discreet for sub in subscriptions):
        new_for_condition = event.get("change_kind") == "new_study" and any(
            sub.kind == "condition" for sub in subscriptions
        )
        subject = NEUTRAL_CONDITION_SUBJECT if new_for_condition else NEUTRAL_STUDY_SUBJECT
        return subject, NEUTRAL_PREHEADER
    title = str((event.get("study") or {}).get("brief_title") or "")
    return f"{headline} · {event.get('nct_id', '')}: {title}", None


# Variants of one renderer that keep their parts encoded with holes (~60 KB each): an audience
# of many one-off variants (each follower typed another condition) stays on the whole path.
ENCODED_VARIANTS = 32


@dataclass
class _Rendered:
    """One variant's templates, rendered with placeholders for the links; from its second
    recipient on (and per set of link lengths: in practice one, tokens have a fixed length),
    both parts encoded with holes."""

    subject: str
    text: str
    html: str
    placeholders: list[str]
    uses: int = 0
    split: tuple[Split, Split] | None = None  # made on the first whole-path mail
    encoded: dict[tuple[int, ...], tuple[QuotedPrintableHoles, Base64Holes]] = field(
        default_factory=dict
    )

    def mail(self, email: str, links: list[str], one_click: str) -> Mail:
        """The whole mail with these links: each placeholder replaced where it stands, left to
        right (as the holes split the text: both paths give the same bytes whatever the text)."""
        if self.split is None:
            self.split = (Split(self.text, self.placeholders), Split(self.html, self.placeholders))
        text, html = self.split
        return Mail(
            to=email,
            subject=self.subject,
            text=text.fill(links),
            html=html.fill(links),
            unsubscribe_url=one_click,
        )

    def parts(self, links: list[str], room: bool) -> tuple[bytes, bytes] | None:
        """Both parts with these links, or None: encode them whole (a variant's first use,
        no `room` for another encoded variant, or links the holes do not fit)."""
        self.uses += 1
        raw = [link.encode() for link in links]
        lengths = tuple(len(link) for link in raw)
        holes = self.encoded.get(lengths)
        if holes is None:
            if self.uses < 2 or not room:
                return None
            holes = (
                QuotedPrintableHoles(self.text, self.placeholders, list(lengths)),
                Base64Holes(self.html, self.placeholders, list(lengths)),
            )
            self.encoded[lengths] = holes
        text, html = holes[0].fill(raw), holes[1].fill(raw)
        return None if text is None or html is None else (text, html)


# Placeholders for the per-recipient links: plain ASCII that HTML escaping leaves alone.
def _unsubscribe_placeholder(index: int) -> str:
    return f"@@notifier-unsubscribe-{index}@@"


MANAGE_PLACEHOLDER = "@@notifier-manage@@"


class AlertRenderer:
    """Renders one event's alerts. The templates run once per distinct set of matching
    subscriptions (kind, label, MeSH id, requirement, discreet), and both MIME parts are encoded
    once; each recipient's signed links are then spliced in (mime.Holes). A fan-out to 100k
    followers of one condition renders and encodes once per send batch, not 100k times."""

    def __init__(
        self, mail_ctx: MailContext, event: dict[str, Any], *, cache_size: int = 256
    ) -> None:
        self.mail_ctx = mail_ctx
        self.event = event
        self.summary = summarize(event)
        self._cache: dict[tuple[Any, ...], _Rendered] = {}
        self._cache_size = cache_size
        self._encoded = 0  # variants in the cache with encoded parts

    def render(
        self, *, subscriber_id: int, email: str, subscriptions: Sequence[SubscriptionView]
    ) -> Mail:
        """Text and HTML parts with the same facts; List-Unsubscribe ends every subscription
        the mail names, the links in the body one each."""
        variant = self._variant(subscriptions)
        return variant.mail(email, *self._links(subscriber_id, subscriptions))

    def render_bytes(
        self,
        *,
        subscriber_id: int,
        email: str,
        subscriptions: Sequence[SubscriptionView],
        msgid: str,
        stuffed: bool = False,
    ) -> bytes:
        """to_bytes(render(...)) byte for byte, with only the links and headers made per
        recipient (the whole path for an address that is not ASCII, or an odd link).

        `stuffed`: when the mail comes from the cached parts, as SMTP's DATA sends it
        (mime.Stuffed; the sender then skips its own scans of every message)."""
        variant = self._variant(subscriptions)
        links, one_click = self._links(subscriber_id, subscriptions)
        settings = self.mail_ctx.settings
        before = len(variant.encoded)
        parts = variant.parts(links, room=self._encoded < ENCODED_VARIANTS)
        self._encoded += len(variant.encoded) - before
        if parts is not None:
            head = Mail(
                to=email, subject=variant.subject, text="", html="", unsubscribe_url=one_click
            )
            data = encoded_to_bytes(settings, head, parts, msgid=msgid, stuffed=stuffed)
            if data is not None:
                return data
        return to_bytes(settings, variant.mail(email, links, one_click), msgid=msgid)

    def _variant(self, subscriptions: Sequence[SubscriptionView]) -> _Rendered:
        if not subscriptions:
            raise ValueError("an alert needs at least one matching subscription")
        signature = tuple(
            (s.kind, s.label, s.mesh_id, s.requires, s.discreet) for s in subscriptions
        )
        cached = self._cache.get(signature)
        if cached is None:
            cached = self._render_templates(subscriptions)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
                self._encoded = 0
            self._cache[signature] = cached
        return cached

    def _links(
        self, subscriber_id: int, subscriptions: Sequence[SubscriptionView]
    ) -> tuple[list[str], str]:
        """The body's links in placeholder order (one unsubscribe per subscription, then
        manage) and the one-click URL: each signed once (a single subscription's one-click is
        its unsubscribe link)."""
        ctx = self.mail_ctx
        links = [ctx.unsubscribe_url(s.id) for s in subscriptions]
        one_click = (
            links[0] if len(links) == 1 else ctx.list_unsubscribe_url([s.id for s in subscriptions])
        )
        links.append(ctx.manage_url(subscriber_id))
        return links, one_click

    def _render_templates(self, subscriptions: Sequence[SubscriptionView]) -> _Rendered:
        event, summary, mail_ctx = self.event, self.summary, self.mail_ctx
        study = event.get("study") or {}
        # Shortened: the full title heads the mail; the reasons only need to recognise it.
        title = shorten(str(study.get("brief_title") or ""), NAME_MAX) or None
        items = [
            {
                "label": subscription_name(sub.kind, sub.label, _titles(event, sub, title)),
                "kind": sub.kind,
                "reason": match_reason(
                    sub.kind,
                    sub.label,
                    event,
                    mesh_id=sub.mesh_id,
                    requires=sub.requires,
                    title=title,
                ),
                "unsubscribe_url": _unsubscribe_placeholder(i),
            }
            for i, sub in enumerate(subscriptions)
        ]
        subject, preheader = _subject(event, summary.headline, subscriptions)
        first_line = summary.lines[0] if summary.lines else None
        default_preheader = (
            f"{first_line.label}: {first_line.new or first_line.old or ''}".strip(": ")
            if first_line
            else str(study.get("brief_title") or "")
        )
        overall = study.get("overall_status")
        context = {
            "site_name": mail_ctx.settings.site_name,
            "subject": subject,
            "preheader": preheader if preheader is not None else default_preheader,
            "headline": summary.headline,
            "lines": summary.lines,
            "is_new_study": event.get("change_kind") == "new_study",
            "nct_id": str(event.get("nct_id") or ""),
            # The study by its title (and short title), the NCT id when an event has none.
            "title": str(study.get("brief_title") or "") or str(event.get("nct_id") or ""),
            "short_title": short_title(study),
            "status": status_label(overall) if overall else "",
            "meaning": status_meaning(overall) if overall else "",
            "changed_on": change_date(event.get("change_kind"), event.get("occurred_on")),
            "study_url": study_url(event),
            "items": items,
            "manage_url": MANAGE_PLACEHOLDER,
        }
        return _Rendered(
            subject=subject,
            text=mail_ctx.templates.get_template("mail/alert.txt").render(context),
            html=mail_ctx.templates.get_template("mail/alert.html").render(context),
            placeholders=[
                *(_unsubscribe_placeholder(i) for i in range(len(subscriptions))),
                MANAGE_PLACEHOLDER,
            ],
        )


def render_alert(
    mail_ctx: MailContext,
    event: dict[str, Any],
    *,
    subscriber_id: int,
    email: str,
    subscriptions: Sequence[SubscriptionView],
) -> Mail:
    """One alert on its own (previews, tests); the send job keeps one AlertRenderer per event."""
    return AlertRenderer(mail_ctx, event).render(
        subscriber_id=subscriber_id, email=email, subscriptions=subscriptions
    )
