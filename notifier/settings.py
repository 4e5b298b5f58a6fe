"""Every environment variable notifier reads, typed and validated once at start-up."""

from __future__ import annotations

import os
import secrets
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from notifier.data.redis_url import RedisTarget, RedisTLS, TlsVerify, parse_redis_url

MIN_SECRET_BYTES = 32

CommaList = Annotated[list[str], NoDecode]
FloatList = Annotated[list[float], NoDecode]


class ConfigError(Exception):
    """Start-up configuration that cannot work; the message says what to set."""


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_bind(value: str) -> tuple[str, list[int]] | None:
    """ "127.0.0.1:9100" or "[::1]:9101-9116" -> (host, ports to try in order); "" or "off" ->
    None."""
    value = value.strip()
    if value.lower() in ("", "off"):
        return None
    host, colon, ports = value.rpartition(":")
    first, _, last = ports.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        low = high = -1
    if not colon or not host or not 0 < low <= high <= 65535 or high - low > 1000:
        raise ValueError('use "host:port" or "host:first-last" (e.g. 127.0.0.1:9101-9116), or ""')
    return host.strip("[]"), list(range(low, high + 1))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore", frozen=True)

    env: Literal["production", "dev"] = "production"
    database_url: str = "sqlite+aiosqlite:///./notifier.db"
    redis_url: str = "redis://localhost:6379/0"
    # TLS to Redis (rediss://, rediss+sentinel://): notifier.data.redis_url.RedisTLS.
    redis_tls_ca_file: str = ""
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""
    redis_tls_verify: TlsVerify = "full"
    redis_sentinel_password: str = ""  # the Sentinels' own requirepass, if they have one
    smtp_url: str = "smtp://localhost:1025"
    smtp_timeout: float = 30.0
    public_url: str = "http://localhost:8080"
    secret_keys: CommaList = Field(default_factory=list)
    email_hash_key: str = ""  # defaults to the oldest secret key; set it before retiring that key
    event_secrets: CommaList = Field(default_factory=list)
    admin_token: str = ""
    mail_from: str = "Trial alerts <alerts@localhost>"
    site_name: str = "the clinical-trials site"  # "who asked": named in every mail
    message_id_domain: str = ""
    list_id: str = "Clinical trial alerts <alerts.notifier.localhost>"
    allowed_origins: CommaList = Field(default_factory=lambda: ["http://localhost:8080"])
    trusted_proxies: CommaList = Field(default_factory=list)
    queue_name: str = "notifier:queue"
    # Prometheus listeners of their own ("host:port" or "host:first-last", the first free port
    # of the range; "" = off): never on the public port without the admin token.
    metrics_bind: str = "127.0.0.1:9100"
    worker_metrics_bind: str = "127.0.0.1:9101-9116"  # one port per worker on the host
    worker_heartbeat_ttl: float = Field(default=30.0, gt=0, description="s a heartbeat lives")
    log_level: str = "INFO"
    # json (the production default) or console (readable lines, the dev default)
    log_format: Literal["json", "console", ""] = ""

    # Tokens and consent.
    confirm_max_age: int = Field(
        default=72 * 3600, gt=0, description="seconds a confirm link lives"
    )
    pending_max_age_days: int = Field(default=30, gt=0)

    # Abuse limits (Redis-backed so they hold across processes).
    signup_address_interval: int = Field(default=600, gt=0, description="seconds between mails")
    signup_address_daily: int = Field(default=3, gt=0)
    confirmed_address_interval: int = Field(default=60, gt=0)
    confirmed_address_daily: int = Field(default=20, gt=0)
    ip_requests_per_minute: int = Field(default=20, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    max_event_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)  # POST /v1/events batches
    body_timeout: float = Field(default=30.0, gt=0, description="s to send a whole body")
    large_bodies_at_once: int = Field(
        default=4, gt=0, description="signed bodies over 64 KiB read at once per web process"
    )

    # Fan-out and sending.
    fanout_page_size: int = Field(default=10_000, gt=0)
    send_batch_size: int = Field(default=500, gt=0)
    send_rate: float = Field(default=0.0, ge=0, description="messages/s over all workers; 0 = off")
    worker_max_jobs: int = Field(default=8, gt=0)
    receipt_lag: int = Field(
        default=1, ge=0, le=100, description="accepted messages a batch sends past without receipt"
    )
    shutdown_grace: int = Field(default=25, ge=0, description="s for in-flight jobs on SIGTERM")
    retry_ladder: FloatList = Field(
        default_factory=lambda: [30.0, 120.0, 600.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0]
    )
    retry_give_up_after: float = Field(
        default=5 * 86400.0, gt=0, description="seconds of transient failures before 'failed'"
    )
    sweep_interval: float = Field(default=60.0, gt=0)
    sweep_stale_after: float = Field(default=300.0, gt=0)
    soft_bounce_limit: int = Field(default=3, gt=0)
    soft_bounce_window_days: int = Field(default=14, gt=0)

    # Retention (jobs.retention, the worker's hourly retention_cron; 0 = keep forever).
    delivery_retention_days: int = Field(
        default=30, ge=0, description="days after an event finished before its rows go"
    )
    event_payload_retention_days: int = Field(default=90, ge=0)
    study_version_retention_days: int = Field(default=365, ge=0)

    # Study records (POST /v1/studies, `notifier sync`).
    max_study_batch: int = Field(default=100, gt=0, description="records per POST /v1/studies")
    max_study_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    study_versions_kept: int = Field(default=5, ge=1, description="snapshots kept per study")
    new_study_window_days: int = Field(default=30, ge=0)
    sync_interval: float = Field(default=0.0, ge=0, description="s between worker syncs; 0 = off")
    sync_base_url: str = "https://clinicaltrials.gov"
    sync_page_size: int = Field(default=200, gt=0, le=1000)
    sync_overlap_days: int = Field(default=2, ge=0)

    @field_validator(
        "secret_keys", "event_secrets", "allowed_origins", "trusted_proxies", mode="before"
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        return _split(value)

    @field_validator("metrics_bind", "worker_metrics_bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        parse_bind(value)  # raises ValueError with the expected form
        return value.strip()

    @field_validator("retry_ladder", mode="before")
    @classmethod
    def _split_floats(cls, value: object) -> object:
        return _split(value)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("use postgresql+asyncpg://… or sqlite+aiosqlite:///…")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _known_smtp(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("smtp", "smtps"):
            raise ValueError("use smtp://[user:pass@]host:port[?starttls=true] or smtps://…")
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str) -> str:
        parse_redis_url(value)  # raises ValueError with the forms it takes
        return value

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    @classmethod
    def _tls_file(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        url = info.data.get("redis_url")
        if url is not None and not parse_redis_url(url).tls:
            raise ValueError("is for TLS: NOTIFIER_REDIS_URL must then be rediss://…")
        try:
            Path(value).open("rb").close()
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror}") from None
        if info.field_name == "redis_tls_key_file" and not info.data.get("redis_tls_cert_file"):
            raise ValueError("needs NOTIFIER_REDIS_TLS_CERT_FILE (the client certificate)")
        return value

    @field_validator("redis_sentinel_password")
    @classmethod
    def _sentinel_only(cls, value: str, info: ValidationInfo) -> str:
        url = info.data.get("redis_url")
        if value and url is not None and not parse_redis_url(url).sentinels:
            raise ValueError("is for redis+sentinel:// URLs only")
        return value

    @field_validator("sync_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("use an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("mail_from")
    @classmethod
    def _mail_from(cls, value: str) -> str:
        # The envelope sender is its address part, put on the wire as MAIL FROM:<address>.
        address = parseaddr(value)[1]
        if (
            not address
            or "@" not in address
            or any(ch.isspace() or ch in '<>"()[],;\\' or ord(ch) < 32 for ch in address)
        ):
            raise ValueError('use an address, or "Name <address>"')
        return value

    @field_validator("retry_ladder")
    @classmethod
    def _ladder(cls, value: list[float]) -> list[float]:
        if not value or any(step <= 0 for step in value):
            raise ValueError("needs at least one positive delay")
        return value

    @model_validator(mode="after")
    def _public_url(self) -> Settings:
        parts = urlsplit(self.public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("NOTIFIER_PUBLIC_URL must be an absolute http(s) URL")
        return self

    @property
    def redis_target(self) -> RedisTarget:
        return parse_redis_url(self.redis_url)

    @property
    def redis_tls(self) -> RedisTLS | None:
        """TLS options when the URL asks for TLS, else None."""
        if not self.redis_target.tls:
            return None
        return RedisTLS(
            self.redis_tls_ca_file,
            self.redis_tls_cert_file,
            self.redis_tls_key_file,
            self.redis_tls_verify,
        )

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def console_logs(self) -> bool:
        return self.log_format == "console" or (not self.log_format and not self.is_production)

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def mail_domain(self) -> str:
        return _mail_domain(self.public_url, self.message_id_domain)


@lru_cache(maxsize=8)
def _mail_domain(public_url: str, message_id_domain: str | None) -> str:
    """Parsed once: every mail's Message-ID asks (a URL parse is microseconds a mail)."""
    return message_id_domain or urlsplit(public_url).hostname or "localhost"


def check_secrets(settings: Settings) -> Settings:
    """Refuse to start in production without real secrets; in dev, fill the gaps and say so."""
    problems = []
    fills: dict[str, object] = {}
    for name in ("secret_keys", "event_secrets"):
        values: list[str] = getattr(settings, name)
        short = [v for v in values if len(v.encode()) < MIN_SECRET_BYTES]
        if settings.is_production and (not values or short):
            problems.append(
                f"NOTIFIER_{name.upper()} needs comma-separated secrets of at least "
                f"{MIN_SECRET_BYTES} bytes each"
            )
        elif not values:
            fills[name] = [secrets.token_urlsafe(32)]
    if len(settings.admin_token.encode()) < MIN_SECRET_BYTES:
        if settings.is_production:
            problems.append(f"NOTIFIER_ADMIN_TOKEN needs at least {MIN_SECRET_BYTES} bytes")
        else:
            fills["admin_token"] = secrets.token_urlsafe(32)
    if problems:
        raise ConfigError(
            "cannot start in production: "
            + "; ".join(problems)
            + " (generate one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    if fills:
        return settings.model_copy(update=fills)
    return settings


# ---- the dev .env: secrets that outlive a restart and reach a second shell ---------------------

DEV_SECRETS = ("secret_keys", "event_secrets", "admin_token")


def env_file() -> Path | None:
    """The dotenv file every command reads (the environment wins over it): NOTIFIER_ENV_FILE,
    default ./.env; empty turns it off."""
    name = os.environ.get("NOTIFIER_ENV_FILE", ".env")
    return Path(name) if name else None


def write_dev_secrets(path: Path, settings: Settings) -> list[str]:
    """Create `path` (mode 0600, never overwritten) with generated values for the secrets that
    neither the environment nor the file gives; returns the variables written."""
    missing = [name for name in DEV_SECRETS if not getattr(settings, name)]
    if not missing or path.exists():
        return []
    lines = [
        "# Written once by `notifier dev` (make run) and reused on every start, so links, the",
        "# event secret and the admin token outlive a restart; `notifier send-test`, `stats` …",
        "# run from this folder read it too. Keep it private; never commit it.",
    ]
    lines += [f"NOTIFIER_{name.upper()}={secrets.token_urlsafe(32)}" for name in missing]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    return [f"NOTIFIER_{name.upper()}" for name in missing]
