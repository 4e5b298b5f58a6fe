"""`notifier web|worker|dev|migrate|preview|send-test|replay|stats|sync`: Settings, dispatch."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import secrets
import signal
import sys
from collections.abc import Sequence
from datetime import date

from pydantic import ValidationError

from notifier.logs import secrets_of, setup_logging
from notifier.settings import (
    DEV_SECRETS,
    ConfigError,
    Settings,
    check_secrets,
    env_file,
    write_dev_secrets,
)

log = logging.getLogger("notifier")

OPERATOR_COMMANDS = ("send-test", "replay", "stats", "sync")
# Operator commands that neither sign nor hash anything: they run without any secret.
NO_SECRET_COMMANDS = ("stats", "replay")


def _load(overrides: dict[str, object]) -> Settings:
    path = env_file()
    try:
        # The environment wins over the file (pydantic-settings' order).
        return Settings(_env_file=path, **overrides)  # type: ignore[arg-type]  # pydantic kwargs
    except ValidationError as exc:
        problems = "; ".join(
            f"NOTIFIER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _settings(command: str) -> Settings:
    dev = command == "dev"
    raw = _load({"env": "dev"} if dev else {})
    if command in ("migrate", "preview"):
        return raw
    if command in NO_SECRET_COMMANDS and not raw.secret_keys:
        # Nothing is signed or hashed: a throwaway key only lets the resources open.
        return raw.model_copy(update={"secret_keys": [secrets.token_urlsafe(32)]})
    path = env_file()
    if dev and path is not None:
        written = write_dev_secrets(path, raw)
        if written:
            raw = _load({"env": "dev"})
            print(
                f"dev mode: wrote {', '.join(written)} to {path} (mode 0600, git-ignored); "
                "every start reuses them, and commands run from this folder read them",
                file=sys.stderr,
            )
        elif path.exists():
            print(f"dev mode: secrets from {path}", file=sys.stderr)
    try:
        settings = check_secrets(raw)
    except ConfigError as exc:
        if command in OPERATOR_COMMANDS:
            raise ConfigError(
                f"{exc}. `notifier {command}` needs the running server's secrets: set them, or "
                f"run it from the folder where `make run` wrote {path or '.env'}"
            ) from None
        raise
    if settings is not raw:
        generated = [name for name in DEV_SECRETS if getattr(settings, name) != getattr(raw, name)]
        print(
            "dev mode: generated throwaway "
            + ", ".join(f"NOTIFIER_{n.upper()}" for n in generated)
            + " (links and tokens stop working on restart; set them to keep them)",
            file=sys.stderr,
        )
    if dev:
        print(f"  NOTIFIER_EVENT_SECRETS={settings.event_secrets[0]}", file=sys.stderr)
        print(f"  NOTIFIER_ADMIN_TOKEN={settings.admin_token}", file=sys.stderr)
    return settings


async def _require_redis(settings: Settings) -> None:
    from notifier.resources import connect_redis

    redis = await connect_redis(settings)
    await redis.aclose()
    await _check_relay(settings)


async def _check_relay(settings: Settings) -> None:
    """Warn at start-up when the SMTP relay does not answer (mail waits and retries meanwhile;
    /readyz shows it too): a silent failure otherwise, since signups still answer "pending"."""
    from notifier.mailer import RelayProbe

    probe = RelayProbe.of(settings.smtp_url)
    if (problem := await probe.problem()) is not None:
        log.warning(probe.warning(problem))


def cmd_migrate(settings: Settings) -> None:
    from notifier.data.migrate import upgrade

    upgrade(settings.database_url)
    print(f"database is at the latest schema ({_safe_url(settings.database_url)})")


def use_uvloop() -> None:
    """uvloop's transports cost about half of asyncio's per SMTP command and HTTP request
    (measured in bench/, docs/PERFORMANCE.md); plain asyncio where it is not installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve_web(settings: Settings, host: str, port: int) -> None:
    """web.run_app, with the runner that answers unparseable requests like the app does."""
    from aiohttp import web  # here, not at the top: a worker never loads aiohttp (~5 MB)

    from notifier.app import create_app
    from notifier.handlers.protocol import NotifierRunner

    runner = NotifierRunner(
        create_app(settings, serve_metrics=True),
        access_log=None,
        shutdown_timeout=settings.shutdown_grace,  # requests in flight get the same grace
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        # Stops listening, lets requests in flight finish within the grace, then closes.
        await runner.cleanup()


def cmd_web(settings: Settings, host: str, port: int) -> None:
    asyncio.run(_require_redis(settings))
    asyncio.run(_serve_web(settings, host, port))


def cmd_worker(settings: Settings) -> None:
    from notifier.worker import build_worker, serve_worker_metrics

    asyncio.run(_require_redis(settings))
    serve_worker_metrics(settings)
    build_worker(settings).run()


async def _dev(settings: Settings, host: str, port: int) -> None:
    from aiohttp import web

    from notifier.app import create_app
    from notifier.handlers.protocol import NotifierRunner
    from notifier.resources import open_resources
    from notifier.worker import build_worker

    await _check_relay(settings)
    async with open_resources(settings) as resources:
        runner = NotifierRunner(
            create_app(settings, resources, serve_metrics=True), access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        print(
            f"notifier dev: web on http://{host}:{port} (worker in this process); "
            f"try http://{host}:{port}/readyz",
            file=sys.stderr,
        )
        worker = build_worker(settings, resources, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()
            await runner.cleanup()


def cmd_dev(settings: Settings, host: str, port: int) -> None:
    from notifier.data.migrate import upgrade

    upgrade(settings.database_url)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_dev(settings, host, port))


def cmd_preview(settings: Settings, out: str) -> None:
    from pathlib import Path

    from notifier.ops.preview import run
    from notifier.ops.sample_events import NoRecords

    try:
        run(settings, Path(out))
    except NoRecords as exc:
        raise ConfigError(str(exc)) from exc


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("web", "HTTP API"), ("dev", "web + worker in one process, SQLite")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8080)
    sub.add_parser("worker", help="arq worker: fan-out, sending, digests, sweeps")
    sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    p = sub.add_parser("preview", help="render every mail from sample studies into a folder")
    p.add_argument("--out", default="mail-preview", help="folder to write (default ./mail-preview)")
    # Operator commands (notifier/opscli.py).
    p = sub.add_parser("send-test", help="mail a test message through the configured SMTP relay")
    p.add_argument("address")
    p.add_argument("--force", action="store_true", help="send even if the address is suppressed")
    p = sub.add_parser("replay", help="fan a stored event out again (never mails anyone twice)")
    p.add_argument("event_id")
    p.add_argument("--wait", action="store_true", help="follow the fan-out until it is done")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to --wait (300)")
    p = sub.add_parser("stats", help="subscribers, subscriptions, events, deliveries, queue")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("sync", help="pull changed study records from ClinicalTrials.gov")
    p.add_argument("--once", action="store_true", help="one run, then exit (for cron)")
    p.add_argument(
        "--interval", type=float, help="seconds between runs (NOTIFIER_SYNC_INTERVAL, or 3600)"
    )
    p.add_argument(
        "--since",
        type=date.fromisoformat,
        help="LastUpdatePostDate to start from (YYYY-MM-DD) instead of the stored cursor",
    )
    p.add_argument("--base-url", help="API host (NOTIFIER_SYNC_BASE_URL, clinicaltrials.gov)")
    p.add_argument("--page-size", type=int, choices=range(1, 1001), metavar="1..1000")
    p.add_argument(
        "--no-alerts",
        action="store_true",
        help="store records without deriving events (a first import that mails nobody)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from notifier.resources import RedisUnavailable

    try:
        settings = _settings(args.command)
        setup_logging(
            settings.log_level, secrets=secrets_of(settings), console=settings.console_logs
        )
        if args.command == "migrate":
            cmd_migrate(settings)
        elif args.command in ("web", "dev"):
            serve = cmd_web if args.command == "web" else cmd_dev
            try:
                serve(settings, args.host, args.port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise ConfigError(
                    f"port {args.port} on {args.host} is already in use (another notifier, "
                    f"or `make run` in another shell?): stop it, or pass --port"
                ) from None
        elif args.command == "worker":
            cmd_worker(settings)
        elif args.command == "preview":
            cmd_preview(settings, args.out)
        elif args.command in OPERATOR_COMMANDS:
            from notifier.ops.commands import run

            return run(settings, args)
    except (ConfigError, RedisUnavailable) as exc:
        print(f"notifier: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # `notifier sync` in a loop, stopped with Ctrl-C
        return 130
    return 0


def entry() -> int:
    """The `notifier` command (and `python -m notifier`): uvloop, then main(). Tests call main()
    directly, so the event loop policy of a test process is never changed."""
    use_uvloop()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
