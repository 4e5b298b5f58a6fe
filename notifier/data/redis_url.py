"""NOTIFIER_REDIS_URL read once: one server (redis://, rediss://, unix://) or a Sentinel set
(redis+sentinel://, rediss+sentinel://), and the redis-py keyword arguments that reach it.

arq's RedisSettings.from_dsn knows no Sentinel URL, and arq's Sentinel pool passes neither
timeouts, retries nor TLS files on; the limits library reads "/master/db" as a master named
"masterdb". So the one parse is here, and resources.py builds every client from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_PORT = 26379
FORMS = (
    "use redis://[[user]:password@]host[:port][/db], rediss://… (TLS), unix:///path/to/socket"
    "[?db=N], or redis+sentinel://[[user]:password@]host:port[,host:port…]/master[/db] "
    "(rediss+sentinel://… for TLS)"
)
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
TlsVerify = Literal["full", "ca", "none"]


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: `sentinels` and `master` when a Sentinel set names the master."""

    tls: bool
    db: int = 0
    username: str | None = None
    password: str | None = None
    host: str = "localhost"
    port: int = 6379
    unix_path: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""

    @property
    def safe_url(self) -> str:
        """The URL for messages and logs, the password masked."""
        auth = f"{self.username or ''}:***@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        if self.unix_path:
            return f"unix://{auth}{self.unix_path}?db={self.db}"
        if self.sentinels:
            hosts = ",".join(f"{_host(h)}:{p}" for h, p in self.sentinels)
            return f"{scheme}+sentinel://{auth}{hosts}/{self.master}/{self.db}"
        return f"{scheme}://{auth}{_host(self.host)}:{self.port}/{self.db}"


@dataclass(frozen=True)
class RedisTLS:
    """NOTIFIER_REDIS_TLS_*: the CA that signs the servers' certificates (default: the system's),
    a client certificate when Redis asks for one, and how much of the server's to verify."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify: TlsVerify = "full"  # full: chain and host name; ca: chain only; none: encrypt only

    def kwargs(self) -> dict[str, Any]:
        return {
            "ssl": True,
            "ssl_ca_certs": self.ca_file or None,
            "ssl_certfile": self.cert_file or None,
            "ssl_keyfile": self.key_file or None,
            "ssl_cert_reqs": "none" if self.verify == "none" else "required",
            "ssl_check_hostname": self.verify == "full",
        }


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port(text: str, default: int) -> int:
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535; {FORMS}")
    return int(text)


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"database {text!r} is not a number; {FORMS}")
    return int(text)


def _location(text: str, default_port: int) -> tuple[str, int]:
    """ "host", "host:port", "[::1]:port" -> (host, port)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"cannot read the host {text!r}; {FORMS}")
        return host, _port(rest[1:], default_port)
    host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"a host is missing in {text!r}; {FORMS}")
    return host, _port(port, default_port)


def parse_redis_url(url: str) -> RedisTarget:
    """The target of a Redis URL; ValueError saying what is wrong (never echoing a password)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {parts.scheme + '://' if scheme else 'none'}; {FORMS}")
    # The netloc's user part is "user:password"; hosts follow the last "@".
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    auth: dict[str, Any] = {
        "username": unquote(user) if at and user else None,
        "password": unquote(secret) if at and colon else None,
        "tls": scheme.startswith("rediss"),
    }
    query_db = parse_qs(parts.query).get("db", [""])[0]
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// URL needs the socket's path; {FORMS}")
        return RedisTarget(unix_path=parts.path, db=_db(query_db), **auth)
    path = [p for p in parts.path.split("/") if p]
    if scheme.endswith("+sentinel"):
        sentinels = tuple(_location(h, SENTINEL_PORT) for h in hosts.split(",") if h)
        if not sentinels:
            raise ValueError(f"name at least one Sentinel host:port; {FORMS}")
        if not path or len(path) > 2:
            raise ValueError(f"name the master after the hosts (…:26379/mymaster/0); {FORMS}")
        db = _db(path[1] if len(path) == 2 else query_db)
        return RedisTarget(sentinels=sentinels, master=unquote(path[0]), db=db, **auth)
    if "," in hosts:
        raise ValueError(f"several hosts are for redis+sentinel:// only; {FORMS}")
    if len(path) > 1:
        raise ValueError(f"the path is the database number only; {FORMS}")
    host, port = _location(hosts or "localhost", 6379)
    return RedisTarget(host=host, port=port, db=_db(path[0] if path else query_db), **auth)
