"""Redis beyond one box: NOTIFIER_REDIS_URL over TLS (rediss://) and through Sentinel
(redis+sentinel://), on real redis-server processes of our own (tests/redis_servers.py).

The failover tests print what they measured (time to recover, requests refused, jobs whose
enqueue was lost and the sweep recovered); README "Scaling out" carries the figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from notifier.__main__ import main
from notifier.app import create_app
from notifier.data.models import Delivery
from notifier.data.redis_url import RedisTarget, parse_redis_url
from notifier.resources import RedisUnavailable, Resources, connect_redis, open_resources
from notifier.settings import Settings
from notifier.worker import build_worker
from tests.conftest import NotifierTestServer, make_settings, reset_state, run_worker
from tests.events_factory import post_events, status_change, subscribe
from tests.redis_servers import RedisProcess, TlsFiles, free_port, need_redis_server, running
from tests.smtp_server import RecordingSMTP

Client = TestClient[Any, Any]
ADA = "ada@example.org"
NCT = "NCT05879978"
MASTER = "mymaster"


# ---- the URL forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", RedisTarget(tls=False)),
        ("redis://127.0.0.1", RedisTarget(tls=False, host="127.0.0.1")),
        ("redis://h:6380?db=3", RedisTarget(tls=False, host="h", port=6380, db=3)),
        (
            "rediss://user:p%40ss@redis.internal:6380/2",
            RedisTarget(
                tls=True, host="redis.internal", port=6380, db=2, username="user", password="p@ss"
            ),
        ),
        (
            "redis://:secret@[::1]:6379/1",
            RedisTarget(tls=False, host="::1", db=1, password="secret"),
        ),
        ("unix:///run/redis.sock?db=4", RedisTarget(tls=False, unix_path="/run/redis.sock", db=4)),
        (
            "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/3",
            RedisTarget(
                tls=False,
                password="pw",
                sentinels=(("s1", 26379), ("s2", 26379), ("::1", 26380)),
                master="mymaster",
                db=3,
            ),
        ),
        (
            "rediss+sentinel://s1:26379/main",
            RedisTarget(tls=True, sentinels=(("s1", 26379),), master="main"),
        ),
    ],
)
def test_redis_urls(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://:hunter22@localhost:6379", "unknown scheme http://"),
        ("redis://:hunter22@localhost:63790000/0", "port '63790000'"),
        ("redis://:hunter22@localhost:6379/zero", "database 'zero'"),
        ("redis://:hunter22@a:1,b:2/0", "several hosts are for redis+sentinel"),
        ("redis+sentinel://:hunter22@s1:26379", "name the master"),
        ("redis+sentinel://:hunter22@s1:26379/m/0/extra", "name the master"),
        ("redis+sentinel://:hunter22@/mymaster", "at least one Sentinel"),
        ("unix://", "socket's path"),
    ],
)
def test_bad_redis_urls_say_what_is_wrong_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(redis_url=url)
    message = caught.value.errors()[0]["msg"]
    assert says in message, message
    assert "redis+sentinel://" in message  # the forms it takes
    assert "hunter22" not in message


@pytest.fixture
def root_logging() -> Iterator[None]:
    """main() points the root logger at this test's captured stderr: give it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://:hunter22@s1:26379/mymaster", ["invalid configuration: NOTIFIER_REDIS_URL: "]),
        (  # a valid URL, and no Sentinel answers
            "redis+sentinel://:hunter22@127.0.0.1:1/mymaster/0",
            [
                "Redis not reachable at redis+sentinel://:***@127.0.0.1:1/mymaster/0",
                "No master found for 'mymaster'",
            ],
        ),
    ],
)
def test_the_cli_stops_with_one_line_saying_why(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, says: list[str]
) -> None:
    monkeypatch.setenv("NOTIFIER_ENV", "dev")
    monkeypatch.setenv("NOTIFIER_REDIS_URL", url)
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in says), err
    assert "Traceback" not in err
    assert "hunter22" not in err


def test_tls_settings_are_checked_at_start(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not read until a connection is made")
    cases: list[tuple[dict[str, str], str, str]] = [
        ({"redis_tls_ca_file": str(ca)}, "redis_tls_ca_file", "must then be rediss://"),
        (
            {"redis_url": "rediss://h/0", "redis_tls_ca_file": str(tmp_path / "nope.crt")},
            "redis_tls_ca_file",
            "cannot read",
        ),
        (
            {"redis_url": "rediss://h/0", "redis_tls_key_file": str(ca)},
            "redis_tls_key_file",
            "needs NOTIFIER_REDIS_TLS_CERT_FILE",
        ),
        ({"redis_sentinel_password": "x"}, "redis_sentinel_password", "redis+sentinel"),
        ({"redis_url": "rediss://h/0", "redis_tls_verify": "maybe"}, "redis_tls_verify", "full"),
    ]
    for values, field, says in cases:
        with pytest.raises(ValidationError) as caught:
            Settings(**values)  # type: ignore[arg-type]  # pydantic coerces the strings
        (error,) = caught.value.errors()
        assert error["loc"] == (field,), (values, error)
        assert says in str(error["msg"]), (values, error)
    ok = Settings(redis_url="rediss://h/0", redis_tls_ca_file=str(ca), redis_tls_verify="ca")
    assert ok.redis_tls is not None
    assert ok.redis_tls.kwargs()["ssl_check_hostname"] is False
    assert Settings().redis_tls is None


# ---- real servers ---------------------------------------------------------------------------


@pytest.fixture
def ports() -> set[int]:
    return set()


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[tuple[Resources, Client]]:
    """open_resources + the app on a test server, the database and this Redis emptied."""
    async with open_resources(settings) as r:
        await reset_state(r)
        app = create_app(settings, r)
        async with TestClient(NotifierTestServer(app, host="127.0.0.1")) as client:
            yield r, client


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> float:
    """Poll `check` every 50 ms until true; the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def signup_and_confirmation(
    r: Resources, client: Client, smtp: RecordingSMTP, email: str = ADA
) -> None:
    """The canonical round trip: a signup enqueues its confirmation, the worker mails it."""
    resp = await client.post("/v1/subscriptions", json={"email": email, "study": NCT})
    assert resp.status == 202, await resp.text()
    await run_worker(r)
    assert len(smtp.to(email)) == 1, [m.rcpt_to for m in smtp.messages]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    need_redis_server(tls=True)
    return TlsFiles.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_redis(tls_files: TlsFiles, tmp_path: Path, ports: set[int]) -> Iterator[RedisProcess]:
    """A TLS-only redis-server that also asks every client for a certificate of our CA."""
    server = RedisProcess(
        "tls", free_port(ports), tmp_path, [], tls=tls_files, tls_auth_clients=True
    )
    with running(server):
        yield server


@pytest.mark.postgres_only
async def test_rediss_with_ca_and_client_certificate_runs_the_service(
    db_url: str, smtp: RecordingSMTP, tls_redis: RedisProcess, tls_files: TlsFiles
) -> None:
    """rediss:// verified against our CA (host name included), with a client certificate:
    /readyz, a signup that enqueues, the worker's job, its mail, the rate limits' keys."""
    settings = make_settings(
        db_url,
        smtp.url,
        redis_url=f"rediss://localhost:{tls_redis.port}/0",
        redis_tls_ca_file=str(tls_files.ca),
        redis_tls_cert_file=str(tls_files.client_cert),
        redis_tls_key_file=str(tls_files.client_key),
    )
    async with service(settings) as (r, client):
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["redis"] == "ok"
        await signup_and_confirmation(r, client, smtp)
        # Everything went through the TLS server: the queue's results and the signup limits.
        keys = [k.decode() for k in tls_redis.call("KEYS", "*")]
        assert any(k.startswith(f"{settings.queue_name}:limits") for k in keys), keys
        assert any(k.startswith("arq:result:") for k in keys), keys


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"redis_tls_ca_file": "other_ca"}, "certificate verify failed"),
        ({"redis_tls_cert_file": "", "redis_tls_key_file": ""}, ""),  # no client certificate
        ({"redis_url": "rediss://127.0.0.2:{port}/0"}, ""),  # nothing listens there
    ],
)
async def test_rediss_refused_says_why_at_start(
    tls_redis: RedisProcess, tls_files: TlsFiles, change: dict[str, str], says: str
) -> None:
    values = {
        "redis_url": f"rediss://localhost:{tls_redis.port}/0",
        "redis_tls_ca_file": str(tls_files.ca),
        "redis_tls_cert_file": str(tls_files.client_cert),
        "redis_tls_key_file": str(tls_files.client_key),
    }
    for key, value in change.items():
        values[key] = str(tls_files.other_ca) if value == "other_ca" else value
    values["redis_url"] = values["redis_url"].format(port=tls_redis.port)
    with pytest.raises(RedisUnavailable) as caught:
        await connect_redis(Settings(**values))  # type: ignore[arg-type]  # all strings
    message = str(caught.value)
    assert message.startswith("Redis not reachable at rediss://")
    assert says in message, message


async def test_rediss_without_verification_still_encrypts(
    tls_redis: RedisProcess, tls_files: TlsFiles
) -> None:
    """NOTIFIER_REDIS_TLS_VERIFY=none trusts any server certificate (another CA here)."""
    redis = await connect_redis(
        Settings(
            redis_url=f"rediss://127.0.0.1:{tls_redis.port}/0",
            redis_tls_ca_file=str(tls_files.other_ca),
            redis_tls_cert_file=str(tls_files.client_cert),
            redis_tls_key_file=str(tls_files.client_key),
            redis_tls_verify="none",
        )
    )
    try:
        assert await redis.ping()
    finally:
        await redis.aclose()


# ---- Sentinel -------------------------------------------------------------------------------


class SentinelSet:
    """A master, one replica and one Sentinel watching them (quorum 1); all TLS with `tls`."""

    def __init__(self, folder: Path, ports: set[int], tls: TlsFiles | None = None) -> None:
        need_redis_server(tls=tls is not None)
        self.tls = tls
        self.master = RedisProcess("master", free_port(ports), folder, [], tls=tls)
        self.replica = RedisProcess("replica", free_port(ports), folder, [], tls=tls)
        self.replica.config.append(f"replicaof 127.0.0.1 {self.master.port}")
        self.sentinel = RedisProcess(
            "sentinel", free_port(ports), folder, [], sentinel=True, tls=tls
        )
        self.sentinel.config += [
            f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} 1",
            f"sentinel down-after-milliseconds {MASTER} 1000",
            f"sentinel failover-timeout {MASTER} 10000",
        ]

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}+sentinel://localhost:{self.sentinel.port}/{MASTER}/0"

    def settings(self, db_url: str, smtp_url: str, **overrides: Any) -> Settings:
        tls = {"redis_tls_ca_file": str(self.tls.ca)} if self.tls else {}
        return make_settings(db_url, smtp_url, redis_url=self.url, **tls, **overrides)

    def master_port(self) -> int:
        _, port = self.sentinel.call("SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(port)

    def wait_until_ready(self) -> None:
        """The Sentinel knows the replica and the replica is in sync: a failover can start."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            replicas = self.sentinel.call("SENTINEL SLAVES", MASTER)
            info = self.replica.call("INFO", "replication")
            down = any("down" in str(r.get("flags", "")) for r in replicas)
            if replicas and not down and info.get("master_link_status") == "up":
                return
            time.sleep(0.05)
        raise AssertionError(f"the Sentinel never saw its replica: {self.sentinel.log()}")


@pytest.fixture
def sentinels(
    request: pytest.FixtureRequest, tmp_path: Path, ports: set[int]
) -> Iterator[SentinelSet]:
    """Plain, or with the parameter "tls" TLS everywhere (rediss+sentinel://)."""
    tls = request.getfixturevalue("tls_files") if getattr(request, "param", "") == "tls" else None
    cluster = SentinelSet(tmp_path, ports, tls)
    with running(cluster.master, cluster.replica, cluster.sentinel):
        cluster.wait_until_ready()
        yield cluster


async def readyz(client: Client) -> int:
    return (await client.get("/readyz")).status


@pytest.mark.postgres_only
@pytest.mark.parametrize("sentinels", ["plain", "tls"], indirect=True)
async def test_sentinel_failover_on_command(
    db_url: str, smtp: RecordingSMTP, sentinels: SentinelSet
) -> None:
    """SENTINEL FAILOVER (a planned switch, e.g. to patch the master's host): the web process
    and a fresh worker follow the new master without a restart; the rate limits' counts moved
    with the data (they are replicated)."""
    settings = sentinels.settings(db_url, smtp.url)
    async with service(settings) as (r, client):
        assert await readyz(client) == 200
        await signup_and_confirmation(r, client, smtp)
        limits = f"{settings.queue_name}:limits*"
        limits_before = set(sentinels.master.call("KEYS", limits))
        assert limits_before

        statuses: list[int] = []

        async def new_master() -> bool:
            statuses.append(await readyz(client))
            return sentinels.master_port() == sentinels.replica.port

        sentinels.sentinel.call("SENTINEL", "FAILOVER", MASTER)
        switched = await eventually(new_master, 10, "a new master")
        # The old master is still up, and still a master until Sentinel reconfigures it (10 s
        # later): the process must leave it by itself (SentinelArqRedis.follow_master).
        pool: Any = r.redis.connection_pool

        async def followed_it() -> bool:
            statuses.append(await readyz(client))
            return bool(pool.master_address == ("127.0.0.1", sentinels.replica.port))

        followed = await eventually(followed_it, 3, "the web process on the new master")
        assert sentinels.master.call("ROLE")[0] == b"master"  # the split-brain window was real
        assert set(statuses) == {200}  # a planned switch is no outage

        await signup_and_confirmation(r, client, smtp, "bob@example.org")  # the new master
        assert sentinels.replica.call("ROLE")[0] == b"master"
        assert any(k.startswith(b"arq:result:") for k in sentinels.replica.call("KEYS", "*"))
        assert limits_before <= set(sentinels.replica.call("KEYS", limits))  # replicated
    print(  # noqa: T201  # the figures README "Scaling out" reports
        f"\n{sentinels.url.split(':')[0]} SENTINEL FAILOVER: new master after "
        f"{switched:.2f} s; the web process on it {followed:.2f} s later"
    )


@pytest.mark.postgres_only
async def test_the_master_dies_and_the_service_carries_on(
    db_url: str, smtp: RecordingSMTP, sentinels: SentinelSet, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL the master under a live worker while the pipeline keeps posting events.

    Until the Sentinel promotes the replica (down-after 1 s here), /readyz answers 503 and an
    event is stored (202) but its fan-out cannot be enqueued; the worker rides the outage out
    on its retrying pool and follows the new master; the sweep re-enqueues the stored events
    from PostgreSQL. Every event is mailed, exactly once."""
    settings = sentinels.settings(db_url, smtp.url, sweep_interval=1.0, sweep_stale_after=2.0)
    caplog.set_level(logging.WARNING, logger="notifier")
    async with service(settings) as (r, client):
        await subscribe(r, ADA, study=NCT)
        worker = build_worker(settings, r, handle_signals=False)
        running_worker = asyncio.create_task(worker.main())
        posted = 0

        async def post_one() -> None:
            nonlocal posted
            event = status_change(NCT, "RECRUITING", "COMPLETED", version_key=f"v{posted}")
            await post_events(client, [event])
            posted += 1

        async def all_mailed() -> bool:
            return len(smtp.to(ADA)) >= posted

        async def sending() -> bool:
            return any(":slice:" in job_id for job_id in worker.job_tasks)

        try:
            await post_one()
            await eventually(all_mailed, 10, "the first event's mail")
            # A send job in flight through the kill: the relay takes 1.5 s to accept RCPT TO.
            smtp.slow[ADA] = 1.5
            await post_one()
            await eventually(sending, 5, "a send job running")

            sentinels.master.kill()
            killed = time.monotonic()
            bob = {"email": "bob@example.org", "study": NCT}
            signup = await client.post("/v1/subscriptions", json=bob)
            statuses: list[int] = []
            while True:  # the pipeline keeps posting, 10 events a second
                await post_one()
                statuses.append(await readyz(client))
                if statuses[-1] == 200 and sentinels.master_port() == sentinels.replica.port:
                    break
                assert time.monotonic() - killed < 15, f"no failover: {sentinels.sentinel.log()}"
                await asyncio.sleep(0.1)
            recovered = time.monotonic() - killed
            for _ in range(3):
                await post_one()
            await eventually(all_mailed, 20, f"{posted} mails")
            everything = time.monotonic() - killed
        finally:
            running_worker.cancel()  # stops polling; the jobs it started may end
            await asyncio.gather(running_worker, *worker.tasks.values(), return_exceptions=True)
            await worker.close()

        async with r.sessions() as session:
            by_status = select(Delivery.status, func.count()).group_by(Delivery.status)
            rows = dict((await session.execute(by_status)).all())
    unqueued = sum("fan-out not enqueued" in rec.getMessage() for rec in caplog.records)
    assert rows == {"sent": posted}
    assert len(smtp.to(ADA)) == posted  # no event twice, none lost
    assert unqueued >= 1  # the window was real
    assert statuses[0] == 503
    assert signup.status == 503
    assert signup.headers["Retry-After"]
    assert worker.jobs_failed == 0  # the send job in flight included
    print(  # noqa: T201  # the figures README "Scaling out" reports
        f"\nmaster SIGKILLed: /readyz 503 for {recovered:.2f} s ({statuses.count(503)} of "
        f"{len(statuses)} checks); {posted} events posted, all 202; {unqueued} fan-outs not "
        f"enqueued and recovered by the sweep; every mail out {everything:.2f} s after the kill"
    )


@pytest.mark.postgres_only
async def test_readyz_says_when_redis_is_a_read_only_replica(
    db_url: str, smtp: RecordingSMTP, tmp_path: Path, ports: set[int]
) -> None:
    """NOTIFIER_REDIS_URL naming a replica (a failover without Sentinel, the old master come
    back as one): PING answers, every write fails. /readyz says so, the load balancer takes
    the process out; pointed at the master it is ready."""
    need_redis_server()
    master = RedisProcess("master", free_port(ports), tmp_path, [])
    replica = RedisProcess("replica", free_port(ports), tmp_path, [])
    replica.config.append(f"replicaof 127.0.0.1 {master.port}")
    with running(master, replica):
        for server, ready in ((replica, False), (master, True)):
            url = f"redis://127.0.0.1:{server.port}/0"
            settings = make_settings(db_url, smtp.url, redis_url=url)
            async with open_resources(settings) as r:
                app = create_app(settings, r)
                async with TestClient(NotifierTestServer(app, host="127.0.0.1")) as client:
                    resp = await client.get("/readyz")
                    body = await resp.json()
            assert resp.status == (200 if ready else 503), body
            if ready:
                assert body["redis"] == "ok"
            else:
                assert body["redis"].startswith("down: a read-only replica"), body
                assert body["database"] == "ok"
