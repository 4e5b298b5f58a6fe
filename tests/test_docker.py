"""The image's entry point and every compose command are real `notifier` subcommands."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
