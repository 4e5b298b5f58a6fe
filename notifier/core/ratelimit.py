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


async def may_mail_address(r: Resources, email_hash: str, confirmed_before: bool) -> bool:
    """Take one mail from the address's allowance: False when it must not be mailed now.

    Keyed by the address hash (never the address itself). Never-confirmed and confirmed
    addresses count separately, so confirming opens the looser allowance at once.
    """
    limiter = _limiter(r)
    interval, daily = address_limits(r, confirmed_before)
    scope = "addr-confirmed" if confirmed_before else "addr"
    # Check the day first without taking from it, so a refusal there costs no interval slot;
    # the interval hit is atomic, so two processes cannot both pass it.
    if not await limiter.test(daily, scope, "day", email_hash):
        return False
    if not await limiter.hit(interval, scope, "interval", email_hash):
        return False
    return await limiter.hit(daily, scope, "day", email_hash)
