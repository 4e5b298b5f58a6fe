"""The README stays true: every setting is in its configuration table, every command in it."""

from __future__ import annotations

from pathlib import Path

from notifier.__main__ import build_parser
from notifier.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"NOTIFIER_{name.upper()}"
        for name in Settings.model_fields
        if f"`NOTIFIER_{name.upper()}`" not in README
    ]
    assert missing == []


def test_every_subcommand_is_documented() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    choices = getattr(sub, "choices", {}) or {}
    assert choices, "the CLI has subcommands"
    assert [c for c in choices if f"`notifier {c}" not in README] == []


def test_the_two_commands_are_there() -> None:
    assert "make run" in README
    assert "make test" in README
