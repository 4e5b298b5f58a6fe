"""What rendering needs besides what it renders: settings, the templates and the link builder.

Never Resources: a mail renders without a database, Redis or an SMTP connection (`notifier
preview` builds one of these from settings alone).
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import Environment

from notifier.core.tokens import Tokens
from notifier.settings import Settings


@dataclass(frozen=True)
class MailContext:
    settings: Settings
    templates: Environment
    tokens: Tokens

    def confirm_url(self, token: str) -> str:
        return f"{self.settings.public_base}/v1/confirm/{token}"

    def unsubscribe_url(self, subscription_id: int) -> str:
        return (
            f"{self.settings.public_base}/v1/unsubscribe/{self.tokens.unsubscribe(subscription_id)}"
        )

    def list_unsubscribe_url(self, subscription_ids: list[int]) -> str:
        """A mail's List-Unsubscribe: one-click ends every subscription the mail was sent for
        (a person pressing the mail client's button expects that kind of mail to stop)."""
        if len(subscription_ids) == 1:
            return self.unsubscribe_url(subscription_ids[0])
        token = self.tokens.unsubscribe_list(subscription_ids)
        return f"{self.settings.public_base}/v1/unsubscribe/{token}"

    def manage_url(self, subscriber_id: int) -> str:
        return f"{self.settings.public_base}/v1/manage/{self.tokens.manage(subscriber_id)}"
