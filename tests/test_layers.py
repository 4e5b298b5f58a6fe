"""The package's layers, held by reading every import (function-local ones too) with `ast`.

handlers/ is the HTTP edge, jobs/ the arq jobs, core/ the rules, mail/ rendering only, data/ the
database; the top-level modules compose them (README, "Code map").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from notifier.queue import Cron, Job

PACKAGE = Path(__file__).resolve().parents[1] / "notifier"

# layer -> what none of its modules may import (a module, or any module below it)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": (
        "notifier.handlers",
        "notifier.jobs",
        "notifier.mail",
        "notifier.worker",
        "notifier.mailer",
        "aiohttp",
        "aiosmtplib",
        "arq.worker",
    ),
    "mail": (
        "notifier.jobs",
        "notifier.handlers",
        "notifier.resources",
        "notifier.mailer",
        "notifier.worker",
        "aiosmtplib",
        "arq",
        "aiohttp",
    ),
    "jobs": ("notifier.handlers", "aiohttp"),
    "handlers": ("notifier.jobs", "notifier.mailer", "notifier.worker", "aiosmtplib", "arq.worker"),
    # data imports nothing above it: only itself, the clock and libraries
    "data": (
        "notifier.core",
        "notifier.mail",
        "notifier.jobs",
        "notifier.handlers",
        "notifier.ops",
        "notifier.resources",
        "notifier.mailer",
        "notifier.worker",
        "notifier.app",
        "notifier.queue",
        "notifier.settings",
    ),
}
# Layers whose whole import closure must stay clear too (not only their own imports): rendering
# needs no I/O client at all, and the web process never loads the worker or its jobs.
CLOSURE_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "notifier.mail": ("notifier.resources", "notifier.mailer", "aiosmtplib", "arq", "aiohttp"),
    "notifier.app": ("notifier.worker", "notifier.jobs", "arq.worker"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, name: str, *, is_package: bool) -> set[str]:
    """Every module `source` imports, anywhere in it (function bodies and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from notifier.core import signup` imports the module notifier.core.signup
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def all_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        graph[name] = imports_of(path.read_text(), name, is_package=path.name == "__init__.py")
    return graph


def breaks(imported: str, forbidden: tuple[str, ...]) -> bool:
    return any(imported == f or imported.startswith(f + ".") for f in forbidden)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        parts = module.split(".")
        layer = parts[1] if len(parts) > 1 else ""
        for target in sorted(imported):
            if layer in FORBIDDEN and breaks(target, FORBIDDEN[layer]):
                found.append(f"{module} imports {target}")
    return found


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module reachable from `start` (and its submodules) through imports."""
    todo = [m for m in graph if m == start or m.startswith(start + ".")]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for target in graph.get(module, ()):
            seen.add(target)
            if target in graph:
                todo.append(target)
    return seen


def test_each_layer_imports_only_what_its_rules_allow() -> None:
    assert layer_violations(all_imports()) == []


@pytest.mark.parametrize("start", sorted(CLOSURE_FORBIDDEN))
def test_what_a_layer_pulls_in_stays_clear(start: str) -> None:
    reached = closure(all_imports(), start)
    assert sorted(m for m in reached if breaks(m, CLOSURE_FORBIDDEN[start])) == []


def test_a_wrong_import_is_caught(tmp_path: Path) -> None:
    """The rules bite: a core module that imported the SMTP client, or a rendering module that
    reached Resources from inside a function, would fail the suite."""
    graph = all_imports()
    graph["notifier.core.signup"] = graph["notifier.core.signup"] | imports_of(
        "def f():\n    from notifier.mailer import Mailer\n",
        "notifier.core.signup",
        is_package=False,
    )
    graph["notifier.mail.alerts"] = graph["notifier.mail.alerts"] | imports_of(
        "from ..resources import Resources\n", "notifier.mail.alerts", is_package=False
    )
    assert layer_violations(graph) == [
        "notifier.core.signup imports notifier.mailer",
        "notifier.core.signup imports notifier.mailer.Mailer",
        "notifier.mail.alerts imports notifier.resources",
        "notifier.mail.alerts imports notifier.resources.Resources",
    ]


def test_the_top_level_holds_only_the_composition_and_small_leaves() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == [
        "__init__",
        "__main__",
        "app",
        "clock",
        "logs",
        "mailer",
        "metrics",
        "pipeline",
        "queue",
        "resources",
        "settings",
        "worker",
    ]


def test_job_and_cron_names_are_the_ones_already_queued_in_redis() -> None:
    """A job queued before a deploy must find its function after it: the names never change."""
    assert sorted(job.value for job in Job) == [
        "fanout_event",
        "ingest_trial_event",
        "manage_link_request",
        "purge_pending",
        "send_confirmation",
        "send_deliveries",
        "send_digest",
        "send_manage_link",
        "send_slice",
        "sweep",
    ]
    assert sorted(cron.value for cron in Cron) == [
        "ctgov_sync_cron",
        "digest_tick",
        "purge_pending_cron",
        "retention_cron",
        "study_versions_cron",
        "sweep_cron",
    ]


def test_the_worker_lists_every_job_and_cron_by_its_name() -> None:
    from notifier.worker import FUNCTIONS, cron_jobs
    from tests.conftest import make_settings

    assert sorted(f.name for f in FUNCTIONS) == sorted(job.value for job in Job)
    settings = make_settings("sqlite+aiosqlite://", "smtp://127.0.0.1:1", sync_interval=900)
    assert sorted(c.name for c in cron_jobs(settings)) == sorted(cron.value for cron in Cron)
    # The ClinicalTrials.gov sync runs only where NOTIFIER_SYNC_INTERVAL asks for it.
    off = make_settings("sqlite+aiosqlite://", "smtp://127.0.0.1:1")
    assert Cron.CTGOV_SYNC.value not in [c.name for c in cron_jobs(off)]
