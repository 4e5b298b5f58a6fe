"""The image's entry point and every compose command are real `notifier` subcommands."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from notifier.__main__ import build_parser

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_command() -> list[str]:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    entry = json.loads(re.findall(r"^ENTRYPOINT (.+)$", text, re.M)[-1])
    cmd = json.loads(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    return [*entry, *cmd]


def compose_commands() -> list[list[str]]:
    text = (ROOT / "docker" / "compose.yaml").read_text()
    return [json.loads(m) for m in re.findall(r"^    command: (\[.+\])$", text, re.M)]


def test_dockerfile_runs_a_real_subcommand() -> None:
    argv = dockerfile_command()
    assert argv[0] == "notifier"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "web"
    assert args.host == "0.0.0.0"  # noqa: S104  # inside the container


@pytest.mark.parametrize("argv", [c for c in compose_commands() if c[0] != "redis-server"])
def test_compose_commands_are_real_subcommands(argv: list[str]) -> None:
    build_parser().parse_args(argv)


def test_compose_runs_web_worker_and_migrate() -> None:
    names = {argv[0] for argv in compose_commands()}
    assert {"web", "worker", "migrate"} <= names


def test_compose_publishes_no_metrics_port() -> None:
    """Issue 18, finding 5: metrics listeners are on the compose network only."""
    yaml: Any = importlib.import_module("yaml")  # PyYAML ships no type hints
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    published = {
        str(port).rsplit(":", 1)[-1] for svc in services.values() for port in svc.get("ports", [])
    }
    assert not published & {"9100", "9101"}, published
    assert services["web"]["environment"]["NOTIFIER_METRICS_BIND"] == "0.0.0.0:9100"
    assert services["worker"]["environment"]["NOTIFIER_WORKER_METRICS_BIND"].endswith(":9101")
