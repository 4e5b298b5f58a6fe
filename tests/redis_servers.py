"""Throwaway redis-server processes for the TLS and Sentinel tests, each in its own temp dir.

They listen on loopback ports from 6400-6420 (never the shared Redis on 6379), keep no data
on disk, and are killed by the test that started them. A CA and certificates for TLS are made
with the openssl command line, so the tests need no crypto library of their own.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

PORTS = range(6400, 6421)
REDIS_SERVER = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")


def free_port(taken: set[int]) -> int:
    """A port of PORTS nothing listens on (and not handed out by this run already)."""
    for port in PORTS:
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def need_redis_server(*, tls: bool = False) -> str:
    """redis-server's path, or skip the test saying what is missing."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    if tls:
        if OPENSSL is None:
            pytest.skip("openssl is not installed (it makes the test certificates)")
        # A TLS build refuses this for want of a certificate; one without TLS, for the option.
        probe = subprocess.run(
            [REDIS_SERVER, "--port", "0", "--tls-port", "1"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        if "No tls-cert-file configured" not in probe.stdout + probe.stderr:
            pytest.skip(f"this redis-server has no TLS: {(probe.stdout + probe.stderr)[-300:]}")
    return REDIS_SERVER


@dataclass
class TlsFiles:
    """A CA, a server certificate for localhost and 127.0.0.1, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of them

    @classmethod
    def make(cls, folder: Path) -> TlsFiles:
        def run(*args: str) -> None:
            assert OPENSSL is not None
            subprocess.run([OPENSSL, *args], cwd=folder, check=True, capture_output=True)

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ("ca", "other-ca"):
            run(
                "req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                "-days", "2", "-subj", f"/CN=notifier test {ca}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            )  # fmt: skip
        for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
            (folder / f"{name}.ext").write_text(
                "basicConstraints=CA:FALSE\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                f"extendedKeyUsage={usage}\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
            )
            run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=localhost {name}")  # fmt: skip
            run(
                "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                "-extfile", f"{name}.ext",
            )  # fmt: skip
        return cls(
            ca=folder / "ca.crt",
            server_cert=folder / "server.crt",
            server_key=folder / "server.key",
            client_cert=folder / "client.crt",
            client_key=folder / "client.key",
            other_ca=folder / "other-ca.crt",
        )


@dataclass
class RedisProcess:
    """One redis-server (or Sentinel) started from a config file in `folder`."""

    name: str
    port: int
    folder: Path
    config: list[str]
    sentinel: bool = False
    tls: TlsFiles | None = None  # TLS only (also to the master it replicates or watches)
    tls_auth_clients: bool = False  # ask every client for a certificate of the CA
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> RedisProcess:
        assert REDIS_SERVER is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / f"{self.name}.conf"
        common = [
            "bind 127.0.0.1",
            f"dir {self.folder}",
            f"logfile {self.folder / self.name}.log",
            "protected-mode no",
        ]
        if not self.sentinel:
            common += ['save ""', "appendonly no"]
        if self.tls is None:
            common.append(f"port {self.port}")
        else:
            common += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca}",
                "tls-replication yes",
                f"tls-auth-clients {'yes' if self.tls_auth_clients else 'no'}",
            ]
        conf.write_text("\n".join([*common, *self.config]) + "\n")
        args = [REDIS_SERVER, str(conf), *(["--sentinel"] if self.sentinel else [])]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.call("PING"):
                    return self
            except (redis.RedisError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start: {self.log()}") from None
                time.sleep(0.02)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain redis-py client straight to this process (not through notifier)."""
        options: dict[str, Any] = {"socket_timeout": 2, **kwargs}
        if self.tls is not None:
            options |= {
                "ssl": True,
                "ssl_ca_certs": str(self.tls.ca),
                "ssl_certfile": str(self.tls.client_cert),
                "ssl_keyfile": str(self.tls.client_key),
            }
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def call(self, *args: Any) -> Any:
        """One command on a fresh client, its reply parsed as redis-py parses it."""
        with self.client() as client:
            return client.execute_command(*args)

    def log(self) -> str:
        path = self.folder / f"{self.name}.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL: what a crashed host or an OOM kill looks like to its clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def running(*processes: RedisProcess) -> Iterator[tuple[RedisProcess, ...]]:
    """Start them in order, stop them all (in reverse) whatever happens."""
    started: list[RedisProcess] = []
    try:
        for process in processes:
            started.append(process.start())
        yield processes
    finally:
        for process in reversed(started):
            process.stop()
