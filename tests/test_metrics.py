"""/metrics parses with the Prometheus text parser and its counters move as requests arrive."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_metrics_parse_and_count_requests(client: TestClient[Any, Any]) -> None:
    before = sample(
        await (await client.get("/metrics")).text(),
        "notifier_http_requests_total",
        route="/healthz",
        status="200",
    )
    for _ in range(3):
        assert (await client.get("/healthz")).status == 200
    text = await (await client.get("/metrics")).text()
    after = sample(text, "notifier_http_requests_total", route="/healthz", status="200")
    assert after == before + 3
    assert sample(text, "notifier_queue_depth") == 0


async def test_metrics_never_carry_raw_paths(client: TestClient[Any, Any]) -> None:
    await client.get("/v1/confirm/secret-token-value")
    text = await (await client.get("/metrics")).text()
    assert "secret-token-value" not in text
