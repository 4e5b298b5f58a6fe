"""Abuse limits in Redis moving windows, so they hold across processes: per IP, per address."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits import RateLimitItemPerSecond as PerSeconds
from limits.aio.strategies import MovingWindowRateLimiter

from notifier.resources import Resources


def _limiter(r: Resources) -> MovingWindowRateLimiter:
    # The limiter holds no state of its own: every count lives in r.limits_storage (Redis).
    return MovingWindowRateLimiter(r.limits_storage)


async def ip_retry_after(r: Resources, ip: str) -> int | None:
    """Count one public POST from `ip`: None when allowed, else the seconds for Retry-After."""
    limiter = _limiter(r)
    item = RateLimitItemPerMinute(r.settings.ip_requests_per_minute)
    if await limiter.hit(item, "ip", ip):
        return None
    stats = await limiter.get_window_stats(item, "ip", ip)
    return max(1, math.ceil(stats.reset_time - time.time()))


def address_limits(r: Resources, confirmed_before: bool) -> tuple[RateLimitItem, RateLimitItem]:
    """(one mail per interval, mails per day) for an address; looser once it has confirmed."""
    s = r.settings
    if confirmed_before:
        return PerSeconds(1, s.confirmed_address_interval), RateLimitItemPerDay(
            s.confirmed_address_daily
        )
    return PerSeconds(1, s.signup_address_interval), RateLimitItemPerDay(s.signup_address_daily)


# Providers that ignore dots in the local part: Google documents that "j.doe@gmail.com" and
# "jdoe@gmail.com" are one mailbox, and googlemail.com is the same service. Elsewhere a dot is
# part of the name ("j.doe" and "jdoe" may be two people at one company), so it is kept there:
# merging them would let one person's signups use up another's allowance.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def canonical_mailbox(email: str) -> str:
    """The mailbox an address delivers to, for per-address limits: lower-cased, the "+tag"
    removed (subaddressing: Gmail, Outlook, iCloud, Fastmail, Proton, Postfix's default
    delimiter), and dots removed where the provider ignores them."""
    local, at, domain = email.strip().lower().rpartition("@")
    if not at:
        return email.strip().lower()
    local = local.split("+", 1)[0] or local
    if domain in DOTLESS_DOMAINS:
        domain = DOTLESS_DOMAINS[domain]
        local = local.replace(".", "") or local
    return f"{local}@{domain}"


def mailbox_hash(r: Resources, email: str) -> str:
    return r.email_hash(canonical_mailbox(email))


async def may_mail_address(
    r: Resources, email_hash: str, confirmed_before: bool, mailbox: str | None = None
) -> bool:
    """Take one mail from the address's allowance: False when it must not be mailed now.

    Keyed by the address hash (never the address itself) and, when given, by the hash of its
    canonical mailbox too (`mailbox_hash`): "victim+1@", "victim+2@"… share one allowance.
    Never-confirmed and confirmed addresses count separately, so confirming opens the looser
    allowance at once.
    """
    limiter = _limiter(r)
    interval, daily = address_limits(r, confirmed_before)
    scope = "addr-confirmed" if confirmed_before else "addr"
    keys = [(scope, email_hash)]
    if mailbox is not None:
        keys.append((f"{scope}-mailbox", mailbox))
    # Check the day first without taking from it, so a refusal there costs no interval slot;
    # the interval hit is atomic, so two processes cannot both pass it.
    for kind, key in keys:
        if not await limiter.test(daily, kind, "day", key):
            return False
    for kind, key in keys:
        if not await limiter.hit(interval, kind, "interval", key):
            return False
    for kind, key in keys:
        await limiter.hit(daily, kind, "day", key)
    return True
