"""The Grafana dashboard and Prometheus config that compose provisions match the metrics we export.

A panel whose query names a metric or label that does not exist draws an empty graph without any
error, so every expression is checked against notifier/metrics.py.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from notifier import metrics

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "notifier.json"
# PyYAML comes with the dev dependencies (schemathesis); it ships no type stubs.
yaml: Any = importlib.import_module("yaml")

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every series
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "by",
    "without",
    "rate",
    "increase",
    "histogram_quantile",
    "le",
}


def exported() -> dict[str, set[str]]:
    """Every sample name /metrics can show, with the labels it may carry."""
    names: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for suffix in SUFFIXES[str(value._type)]:
                labels = set(value._labelnames) | TARGET_LABELS
                if suffix == "_bucket":
                    labels.add("le")
                names[value._name + suffix] = labels
    return names


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def test_dashboard_is_provisionable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "notifier"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("expr", expressions())
def test_every_query_names_real_metrics_and_labels(expr: str) -> None:
    known = exported()
    assert expr.count("(") == expr.count(")")
    assert expr.count("{") == expr.count("}")
    used = re.findall(r"\bnotifier_\w+", expr)
    assert used, f"no notifier metric in {expr}"
    for name in used:
        assert name in known, f"{name} is not exported by notifier/metrics.py"
    allowed = set().union(*(known[name] for name in used))
    for selector in re.findall(r"\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
            assert label in allowed, f"label {label} in {expr}"
    for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
        for label in (part.strip() for part in grouping.split(",")):
            assert label in allowed, f"grouping by {label} in {expr}"
    words = set(re.findall(r"\b([a-z_]+)\s*\(", expr)) - {"by"}
    assert words <= PROMQL_WORDS, words


def test_the_dashboard_shows_every_metric_and_what_the_issue_asks_for() -> None:
    text = " ".join(expressions())
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            assert value._name in text, f"{value._name} is on no panel"
    titles = {p["title"] for p in panels()}
    wanted = {
        "Delivery rate by outcome",
        "Failures by kind",
        "Queue depth",
        "Signups by result",
        "Confirmations and unsubscribes",
        "HTTP errors by route",
    }
    assert wanted <= titles


def test_prometheus_scrapes_web_and_worker() -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: (job.get("metrics_path", "/metrics"), job["static_configs"][0]["targets"])
        for job in config["scrape_configs"]
    }
    assert targets == {
        "notifier-web": ("/metrics", ["web:9100"]),
        "notifier-worker": ("/metrics", ["worker:9101"]),
    }
    # The queue-depth panels read the web job's gauge (the worker never sets it).
    assert 'notifier_queue_depth{job="notifier-web"}' in " ".join(expressions())


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert (source["uid"], source["url"]) == ("prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((provisioning / "dashboards" / "notifier.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


def binds(volumes: list[Any]) -> dict[str, Path]:
    """target -> host path of bind mounts, in compose v1 (short) or v2 (long) syntax."""
    found = {}
    for volume in volumes:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume["type"] == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith("/"):
            found[target] = Path(source)
    return found


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_provisions_prometheus_and_grafana_from_these_files() -> None:
    env = {
        **os.environ,
        "NOTIFIER_SECRET_KEYS": "x" * 32,
        "NOTIFIER_EVENT_SECRETS": "y" * 32,
        "NOTIFIER_ADMIN_TOKEN": "z" * 32,
    }
    result = subprocess.run(
        ["docker-compose", "-f", str(DOCKER / "compose.yaml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    mounts = {name: binds(services[name]["volumes"]) for name in ("prometheus", "grafana")}
    assert mounts["prometheus"]["/etc/prometheus/prometheus.yml"] == DOCKER / "prometheus.yml"
    assert mounts["grafana"]["/etc/grafana/provisioning"] == DOCKER / "grafana" / "provisioning"
    assert mounts["grafana"]["/etc/grafana/dashboards"] == DASHBOARD.parent
    assert "9101" in services["worker"]["expose"]
