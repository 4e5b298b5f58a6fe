"""The Jinja2 environment, built once: HTML autoescaped, text raw, undefined names are errors."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


def make_environment() -> Environment:
    return Environment(
        loader=PackageLoader("notifier", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
