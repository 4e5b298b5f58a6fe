"""The Jinja2 environment, built once: HTML autoescaped, text raw, undefined names are errors."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


def sentence(text: str) -> str:
    """Upper-case the first letter only ("the clinical-trials site will…" starting a sentence;
    Jinja's capitalize would lower-case the rest, "NHS" included)."""
    return text[:1].upper() + text[1:]


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("notifier", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["sentence"] = sentence
    return env
