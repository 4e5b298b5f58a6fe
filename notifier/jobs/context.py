"""What every job gets from arq's context: the worker's Resources."""

from __future__ import annotations

from typing import Any

from notifier.resources import Resources


def resources_of(ctx: dict[str, Any]) -> Resources:
    resources: Resources = ctx["resources"]
    return resources
