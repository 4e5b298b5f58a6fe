"""Every stored state, in one place: the values in the database never change, so these are the
names the code uses for them (StrEnum: each member is its stored string)."""

from __future__ import annotations

from enum import StrEnum


class SubscriptionStatus(StrEnum):
    PENDING = "pending"  # asked for, not yet confirmed: nothing is mailed
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"


class Frequency(StrEnum):
    INSTANT = "instant"
    DAILY = "daily"
    WEEKLY = "weekly"


DIGEST_FREQUENCIES = (Frequency.DAILY, Frequency.WEEKLY)


class EventStatus(StrEnum):
    RECEIVED = "received"
    FANNING_OUT = "fanning_out"
    FANNED_OUT = "fanned_out"
    IMMATERIAL = "immaterial"  # nothing a participant cares about changed: no mail


OPEN_EVENT = (EventStatus.RECEIVED, EventStatus.FANNING_OUT)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by a batch; next_attempt_at holds the claim time
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"  # for the subscriber's digest
    DIGESTING = "digesting"  # claimed by a digest being mailed; next_attempt_at holds the claim
    RETRY = "retry"  # an outcome only: written back as pending with a later next_attempt_at


# Rows with work still ahead: retention never removes them (nor their event's other rows).
LIVE_DELIVERY = (
    DeliveryStatus.PENDING,
    DeliveryStatus.SENDING,
    DeliveryStatus.HELD,
    DeliveryStatus.DIGESTING,
)


class SliceStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # taken by its send job; queued_at holds the claim time
    DONE = "done"


# Slices whose mails are not all written as delivery rows yet.
OPEN_SLICE = (SliceStatus.PENDING, SliceStatus.SENDING)
