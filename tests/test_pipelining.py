"""The SMTP seam pipelines a transaction (RFC 2920) when the server offers PIPELINING, and maps
every failure exactly as the one-command-at-a-time path does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiosmtplib
import pytest
import uvloop
from aiosmtplib.protocol import SMTPProtocol

from notifier.mailer import Connection, ConnectionLost, Mailer, PipeliningProtocol, SendError
from tests.smtp_server import RecordingSMTP

SENDER = "alerts@notify.example.org"
MESSAGE = b"Subject: hello\r\nTo: someone\r\n\r\n.a line that starts with a dot\r\nbye\r\n"


@pytest.fixture(params=[True, False], ids=["pipelining", "one-at-a-time"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RecordingSMTP]:
    smtp = RecordingSMTP(pipelining=request.param)
    await smtp.start()
    yield smtp
    await smtp.stop()


async def send(conn: Connection, recipient: str) -> SendError | None:
    try:
        await conn.send(SENDER, recipient, MESSAGE)
    except SendError as exc:
        return exc
    return None


async def test_the_session_pipelines_only_when_the_server_offers_it(server: RecordingSMTP) -> None:
    async with Mailer(server.url, timeout=5).connect() as conn:
        assert (conn._pipelined is not None) is server.pipelining
        assert isinstance(conn._client.protocol, PipeliningProtocol)
        for i in range(20):
            assert await send(conn, f"r{i}@example.org") is None
    assert [m.rcpt_to for m in server.messages] == [f"r{i}@example.org" for i in range(20)]
    # Dot-stuffing and the terminator: the server reads back exactly the message.
    assert {m.data for m in server.messages} == {MESSAGE}
    assert server.connections == 1


async def test_a_refused_recipient_leaves_the_session_usable(server: RecordingSMTP) -> None:
    server.reject["busy@example.org"] = "452 4.2.2 mailbox full"
    server.reject["gone@example.org"] = "550 5.1.1 no such user"
    async with Mailer(server.url, timeout=5).connect() as conn:
        busy = await send(conn, "busy@example.org")
        gone = await send(conn, "gone@example.org")
        assert await send(conn, "ok@example.org") is None
    assert busy is not None
    assert not busy.permanent
    assert busy.code == 452
    assert not isinstance(busy, ConnectionLost)
    assert gone is not None
    assert gone.permanent
    assert gone.suppresses
    assert [m.rcpt_to for m in server.messages] == ["ok@example.org"]
    assert server.transactions == 1  # a refused RCPT: DATA was answered 503, nothing stored


async def test_a_refused_data_is_permanent_and_the_next_message_goes(server: RecordingSMTP) -> None:
    server.reject_data["spam@example.org"] = "554 5.7.1 message refused"
    async with Mailer(server.url, timeout=5).connect() as conn:
        refused = await send(conn, "spam@example.org")
        assert await send(conn, "ok@example.org") is None
    assert refused is not None
    assert refused.permanent
    assert refused.code == 554
    assert not refused.suppresses
    assert [m.rcpt_to for m in server.messages] == ["ok@example.org"]


async def test_a_refused_sender_never_suppresses(server: RecordingSMTP) -> None:
    server.reject_sender = "553 5.1.8 sender domain does not exist"
    async with Mailer(server.url, timeout=5).connect() as conn:
        refused = await send(conn, "ok@example.org")
    assert refused is not None
    assert not refused.permanent
    assert not refused.suppresses
    assert "sender refused" in str(refused)
    assert server.messages == []


async def test_421_closes_the_session_for_the_batch_to_reconnect(server: RecordingSMTP) -> None:
    server.reject["late@example.org"] = "421 4.3.2 shutting down"
    async with Mailer(server.url, timeout=5).connect() as conn:
        assert await send(conn, "first@example.org") is None
        lost = await send(conn, "late@example.org")
    assert isinstance(lost, ConnectionLost)
    assert lost.code == 421


async def test_a_drop_after_the_content_is_the_one_possible_duplicate(
    server: RecordingSMTP,
) -> None:
    """The server stored the message and the connection dropped before its 250: the sender
    cannot know, so the message counts as not sent (ConnectionLost, retried)."""
    server.drop_after_data.add("dropped@example.org")
    async with Mailer(server.url, timeout=5).connect() as conn:
        lost = await send(conn, "dropped@example.org")
        assert not conn.is_connected
    assert isinstance(lost, ConnectionLost)
    assert [m.rcpt_to for m in server.messages] == ["dropped@example.org"]


async def test_a_server_that_stops_answering_times_out(server: RecordingSMTP) -> None:
    server.slow["slow@example.org"] = 3.0
    async with Mailer(server.url, timeout=0.5).connect() as conn:
        started = asyncio.get_running_loop().time()
        lost = await send(conn, "slow@example.org")
        waited = asyncio.get_running_loop().time() - started
        assert not conn.is_connected
    assert isinstance(lost, ConnectionLost)
    assert 0.45 <= waited < 2.0, waited  # the timeout's, not the server's 3 s


async def test_each_wait_has_the_whole_timeout_however_long_the_session(
    server: RecordingSMTP,
) -> None:
    """One watch timer a session bounds the waits (not a timer a wait): each wait still gets
    the whole timeout from its own start, so slow answers that each come in time, adding up
    to several timeouts, never time the session out."""
    recipients = [f"r{i}@example.org" for i in range(6)]
    for recipient in recipients:
        server.slow[recipient] = 0.3
    async with Mailer(server.url, timeout=0.5).connect() as conn:
        started = asyncio.get_running_loop().time()
        assert await send_all(conn, recipients) == [None] * 6
        assert asyncio.get_running_loop().time() - started >= 1.8  # 3.6 timeouts in all
        assert conn.is_connected
    assert [m.rcpt_to for m in server.messages] == recipients


async def test_replies_split_across_packets_and_joined_in_one(server: RecordingSMTP) -> None:
    """The FIFO takes every complete reply in the buffer, however the bytes arrive."""
    replies: list[list[aiosmtplib.SMTPResponse]] = []
    async with Mailer(server.url, timeout=5).connect() as conn:
        protocol = conn._client.protocol
        assert isinstance(protocol, PipeliningProtocol)
        joined = b"250 a\r\n250-b\r\n250 c\r\n354 d\r\n"
        task = asyncio.ensure_future(protocol.replies(protocol.expect(b"NOOP\r\n", 1), 5))
        await asyncio.sleep(0.05)
        replies.append(await task)  # the server's own reply to NOOP
        waiting = asyncio.ensure_future(protocol.replies(protocol.expect(b"", 3), 5))
        await asyncio.sleep(0)
        for i in range(0, len(joined), 5):  # in pieces of 5 bytes
            protocol.data_received(joined[i : i + 5])
        replies.append(await waiting)
    assert [r.code for r in replies[0]] == [250]
    assert [(r.code, r.message) for r in replies[1]] == [(250, "a"), (250, "b\nc"), (354, "d")]


def test_pipelining_under_uvloop_the_worker_s_loop() -> None:
    """uvloop keeps a protocol's bound data_received: the class change must reach it."""

    async def main() -> list[str]:
        smtp = RecordingSMTP()
        await smtp.start()
        try:
            async with Mailer(smtp.url, timeout=5).connect() as conn:
                assert conn._pipelined is not None
                for i in range(5):
                    await conn.send(SENDER, f"u{i}@example.org", MESSAGE)
        finally:
            await smtp.stop()
        return [m.rcpt_to for m in smtp.messages]

    assert uvloop.run(main()) == [f"u{i}@example.org" for i in range(5)]


def test_the_private_names_the_subclass_reads_are_still_there() -> None:
    """PipeliningProtocol was written against aiosmtplib 5.1.3 (requirements.lock). A newer
    aiosmtplib must still have what it reads, or this fails before any mail is lost."""
    protocol = SMTPProtocol(loop=asyncio.new_event_loop())
    for name in ("_buffer", "_loop", "_read_response_from_buffer", "write"):
        assert hasattr(protocol, name), name
    assert callable(aiosmtplib.SMTP.supports_extension)
    read: Callable[[], object] = protocol._read_response_from_buffer
    protocol._buffer.extend(b"250-one\r\n250 two\r\n354 go\r\n")
    first, second = read(), read()
    assert (first, second) == (
        aiosmtplib.SMTPResponse(250, "one\ntwo"),
        aiosmtplib.SMTPResponse(354, "go"),
    )
    protocol._loop.close()


# ---- the next envelope with this message's content (Connection.send's `then`) ---------------


async def send_all(conn: Connection, recipients: list[str]) -> list[SendError | None]:
    """As the send job does: each message names the next one's recipient."""
    out: list[SendError | None] = []
    for i, recipient in enumerate(recipients):
        following = recipients[i + 1] if i + 1 < len(recipients) else None
        try:
            await conn.send(SENDER, recipient, MESSAGE, then=following)
        except ConnectionLost as exc:
            out.append(exc)
            break
        except SendError as exc:
            out.append(exc)
        else:
            out.append(None)
    return out


def count_writes(conn: Connection) -> list[int]:
    protocol = conn._client.protocol
    assert protocol is not None
    writes: list[int] = []
    real = protocol.write

    def write(data: bytes) -> None:
        writes.append(len(data))
        real(data)

    protocol.write = write  # type: ignore[method-assign]
    return writes


async def test_naming_the_next_recipient_makes_each_message_one_write(
    server: RecordingSMTP,
) -> None:
    recipients = [f"r{i}@example.org" for i in range(20)]
    async with Mailer(server.url, timeout=5).connect() as conn:
        writes = count_writes(conn)
        assert await send_all(conn, recipients) == [None] * 20
    assert [m.rcpt_to for m in server.messages] == recipients
    assert {m.data for m in server.messages} == {MESSAGE}
    if server.pipelining:  # the first envelope alone, then content + next envelope; QUIT
        assert len(writes) == 1 + 20 + 1
        assert writes[-1] == len(b"QUIT\r\n")
    else:
        assert len(writes) >= 20 * 4


async def test_failures_with_the_next_envelope_in_flight_map_as_before(
    server: RecordingSMTP,
) -> None:
    server.reject["busy@example.org"] = "452 4.2.2 mailbox full"
    server.reject["gone@example.org"] = "550 5.1.1 no such user"
    server.reject_data["spam@example.org"] = "554 5.7.1 message refused"
    order = [
        "a@example.org",
        "busy@example.org",
        "spam@example.org",
        "gone@example.org",
        "b@example.org",
    ]
    async with Mailer(server.url, timeout=5).connect() as conn:
        a, busy, spam, gone, b = await send_all(conn, order)
    assert a is None
    assert b is None
    assert busy is not None
    assert (busy.code, busy.permanent) == (452, False)
    assert spam is not None
    assert (spam.code, spam.permanent, spam.suppresses) == (554, True, False)
    assert gone is not None
    assert gone.suppresses
    assert [m.rcpt_to for m in server.messages] == ["a@example.org", "b@example.org"]
    assert server.connections == 1


async def test_a_421_to_the_content_with_the_next_envelope_out_ends_the_session(
    server: RecordingSMTP,
) -> None:
    server.reject_data["a@example.org"] = "421 4.3.2 shutting down"
    async with Mailer(server.url, timeout=5).connect() as conn:
        (lost,) = await send_all(conn, ["a@example.org", "b@example.org"])
    assert isinstance(lost, ConnectionLost)
    assert lost.code == 421
    assert server.messages == []


async def test_a_drop_after_the_content_leaves_the_next_message_unsent(
    server: RecordingSMTP,
) -> None:
    server.drop_after_data.add("a@example.org")
    async with Mailer(server.url, timeout=5).connect() as conn:
        (lost,) = await send_all(conn, ["a@example.org", "b@example.org"])
        assert not conn.is_connected
    assert isinstance(lost, ConnectionLost)
    assert [m.rcpt_to for m in server.messages] == ["a@example.org"]  # the known duplicate case


async def test_an_envelope_written_ahead_and_never_used_delivers_nothing(
    server: RecordingSMTP,
) -> None:
    """A batch that stops early (its claim lapsed, a crash) leaves the server in DATA for a
    message it never sends: the session is dropped, not QUIT (QUIT would be message text), and
    no empty or partial message is stored. It ends at once, not after a timeout."""
    started = asyncio.get_running_loop().time()
    async with Mailer(server.url, timeout=5).connect() as conn:
        await conn.send(SENDER, "a@example.org", MESSAGE, then="b@example.org")
        assert conn.in_data is server.pipelining
    assert asyncio.get_running_loop().time() - started < 2
    await asyncio.sleep(0.1)
    assert [m.rcpt_to for m in server.messages] == ["a@example.org"]


async def test_a_message_for_another_recipient_than_the_one_announced_is_refused(
    server: RecordingSMTP,
) -> None:
    async with Mailer(server.url, timeout=5).connect() as conn:
        await conn.send(SENDER, "a@example.org", MESSAGE, then="b@example.org")
        wrong = await send(conn, "c@example.org")
    if server.pipelining:
        assert isinstance(wrong, ConnectionLost)
        assert [m.rcpt_to for m in server.messages] == ["a@example.org"]
    else:  # nothing was written ahead: any next message is fine
        assert wrong is None


# ---- a scripted server, for replies aiosmtpd never gives ---------------------------------------


class ScriptedSMTP:
    """Answers as an ESMTP server with PIPELINING; `answer(command, recipient)` may return
    another reply (bytes) or (delay seconds, reply) for a command or b"<END>" (the content)."""

    def __init__(self, answer: Callable[[bytes, bytes | None], object]) -> None:
        self.answer = answer
        self.stored: list[bytes | None] = []
        self.commands: list[bytes] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return f"smtp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        rcpt: bytes | None = None
        in_data = False
        while line := await reader.readline():
            if in_data:
                if line != b".\r\n":
                    continue
                in_data = False
                self.stored.append(rcpt)
                reply = self.answer(b"<END>", rcpt) or b"250 ok\r\n"
            else:
                command = line.strip()
                self.commands.append(command)
                verb = command[:4].upper()
                if verb == b"RCPT":
                    rcpt = command[9:-1]
                reply = self.answer(command, rcpt) or {
                    b"EHLO": b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                    b"DATA": b"354 go\r\n",
                    b"QUIT": b"221 bye\r\n",
                }.get(verb, b"250 ok\r\n")
                in_data = verb == b"DATA" and reply == b"354 go\r\n"
            if isinstance(reply, tuple):
                await asyncio.sleep(reply[0])
                reply = reply[1]
            assert isinstance(reply, bytes)
            writer.write(reply)
        writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_a_send_cancelled_mid_transaction_drops_the_session_at_once() -> None:
    """An arq job timeout or a shutdown cancels a send while the server waits: the session is
    dropped (QUIT now would be read as message text, and wait out its own timeout)."""
    server = ScriptedSMTP(
        lambda command, _: (1.0, b"250 ok\r\n") if command[:4] == b"MAIL" else None
    )
    url = await server.start()

    async def job() -> None:
        async with Mailer(url, timeout=30).connect() as conn:
            await conn.send(SENDER, "b@example.org", MESSAGE, then="c@example.org")

    task = asyncio.ensure_future(job())
    await asyncio.sleep(0.3)
    task.cancel()
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.get_running_loop().time() - started < 1
    await asyncio.sleep(1.2)
    assert server.stored == []
    assert b"QUIT" not in server.commands
    await server.stop()


async def test_an_unreadable_reply_ends_the_session_like_a_drop() -> None:
    """A garbled reply inside a group: nobody knows which command it answered, so the message
    in flight counts as not sent (retried, the one possible duplicate) and the session ends at
    once instead of going on out of step."""
    server = ScriptedSMTP(
        lambda command, rcpt: (
            b"25O garbled\r\n" if command == b"<END>" and rcpt == b"b@x.org" else None
        )
    )
    url = await server.start()
    started = asyncio.get_running_loop().time()
    async with Mailer(url, timeout=5).connect() as conn:
        results = await send_all(conn, ["a@x.org", "b@x.org", "c@x.org"])
    assert asyncio.get_running_loop().time() - started < 2
    assert results[0] is None
    assert isinstance(results[1], ConnectionLost)
    assert len(results) == 2  # the batch reconnects for c
    await server.stop()


async def test_the_next_envelope_s_replies_get_the_whole_timeout_after_a_pause() -> None:
    """The watch timer of one wait must not fail replies nobody waits for yet: a final reply
    that comes late in its timeout, then a pause in the job (a flush, a receipt), then the next
    message's envelope replies, slow too, each inside its own timeout (found in review)."""
    server = ScriptedSMTP(
        lambda command, rcpt: (
            (0.42, b"250 ok\r\n")
            if command == b"<END>" and rcpt == b"a@x.org"
            else (0.2, b"250 ok\r\n")
            if command[:4] == b"RCPT" and rcpt == b"b@x.org"
            else None
        )
    )
    url = await server.start()
    try:
        async with Mailer(url, timeout=0.5).connect() as conn:
            await conn.send(SENDER, "a@x.org", MESSAGE, then="b@x.org")
            await asyncio.sleep(0.15)
            await conn.send(SENDER, "b@x.org", MESSAGE)  # no ConnectionLost
            assert conn.is_connected
    finally:
        await server.stop()


async def test_the_ehlo_name_is_looked_up_once_per_process(
    server: RecordingSMTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiosmtplib asks socket.getfqdn() (reverse DNS) on every connection; a send batch opens
    one, so the name is looked up once and reused."""
    import socket

    import notifier.mailer

    lookups: list[int] = []

    def getfqdn(name: str = "") -> str:
        lookups.append(1)
        return "worker-1.example.org"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    monkeypatch.setattr(notifier.mailer, "_fqdn", None)
    for _ in range(3):
        async with Mailer(server.url, timeout=5).connect() as conn:
            assert await send(conn, "once@example.org") is None
            assert conn._client.local_hostname == "worker-1.example.org"
    assert lookups == [1]
