"""Prometheus metrics, defined once; web and worker processes each expose their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "notifier_http_requests",
    "HTTP requests by route and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
# By what the request itself shows, never by the address's state (new, pending, confirmed,
# suppressed, over its limit): those all answer alike, and a counter must not tell them apart.
SIGNUPS = Counter(
    "notifier_signups",
    "Signup requests: accepted (whatever the address's state), invalid, ip_limited",
    ["result"],
    registry=REGISTRY,
)
CONFIRMATIONS = Counter("notifier_confirmations", "Subscriptions confirmed", registry=REGISTRY)
UNSUBSCRIBES = Counter(
    "notifier_unsubscribes", "Subscriptions ended, by way", ["via"], registry=REGISTRY
)
EVENTS = Counter(
    "notifier_events",
    "Trial-change events by result (accepted, duplicate, rejected)",
    ["result", "source"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "notifier_deliveries",
    "Delivery outcomes (sent, retry, failed, skipped, suppressed)",
    ["outcome"],
    registry=REGISTRY,
)
UNSUPPORTED_MESH = Counter(
    "notifier_unsupported_mesh_terms",
    "MeSH terms on a study record that none of the study's own words support (never matched)",
    registry=REGISTRY,
)
MAILS = Counter("notifier_mails", "Mails handed to SMTP by kind", ["kind"], registry=REGISTRY)
SEND_SECONDS = Histogram(
    "notifier_send_seconds",
    "Seconds per SMTP transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
SWEEP_RECOVERED = Counter(
    "notifier_sweep_recovered", "Deliveries re-enqueued by the sweep", registry=REGISTRY
)
RESENDS_AVOIDED = Counter(
    "notifier_resends_avoided",
    "Deliveries claimed again after their worker died, found accepted in Redis (receipts) and"
    " recorded as sent instead of mailed again",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("notifier_queue_depth", "Jobs waiting in the arq queue", registry=REGISTRY)
WORKERS_ALIVE = Gauge(
    "notifier_workers_alive",
    "Worker processes with a live heartbeat in Redis (read at scrape)",
    registry=REGISTRY,
)
