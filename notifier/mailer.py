"""The only aiosmtplib user: SMTP connections by URL, transient vs permanent failures, and a
quick check that the relay answers at all."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol, normalize_message_line_endings

from notifier.mail.mime import Stuffed


class SendError(Exception):
    """A message was not accepted; `permanent` says whether retrying can help."""

    def __init__(self, message: str, *, code: int | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent

    @property
    def suppresses(self) -> bool:
        """5.1.x (bad mailbox or address): the address must never be tried again."""
        return self.permanent and " 5.1." in f" {self}"


class ConnectionLost(SendError):
    """The connection itself failed: this and every later message of the batch must retry."""


@dataclass(frozen=True)
class SMTPConfig:
    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool | None
    validate_certs: bool

    @classmethod
    def from_url(cls, url: str) -> SMTPConfig:
        parts = urlsplit(url)
        query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
        use_tls = parts.scheme == "smtps"
        starttls: bool | None = None  # aiosmtplib: use STARTTLS when the server offers it
        if "starttls" in query:
            starttls = query["starttls"] in ("1", "true", "yes")
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (465 if use_tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=use_tls,
            start_tls=False if use_tls else starttls,
            validate_certs=query.get("verify", "true") not in ("0", "false", "no"),
        )

    def __repr__(self) -> str:  # never show the password
        auth = f"{self.username}:***@" if self.username else ""
        return f"SMTPConfig(smtp{'s' if self.use_tls else ''}://{auth}{self.host}:{self.port})"


def _address(address: str) -> bytes:
    """An ASCII address for MAIL/RCPT; control characters refused as aiosmtplib refuses them
    (ValueError), so nothing can be injected into the command group."""
    raw = address.encode("ascii")
    if any(b < 0x20 or b == 0x7F for b in raw):
        raise ValueError("Command arg contains a prohibited control character")
    return raw


def data_payload(message: bytes) -> bytes:
    """What follows DATA (RFC 5321 4.5.2): CRLF line endings, dot-stuffed, then CRLF.CRLF;
    byte for byte what aiosmtplib's execute_data_command sends. A mime.Stuffed message is in
    that form already (an alert from the cached parts); our other messages have CRLF line
    endings, so the common case is a few scans and one bytes.replace."""
    if isinstance(message, Stuffed):
        return message
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = normalize_message_line_endings(message)  # a lone CR or LF: aiosmtplib's rule
    elif not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol with a FIFO of reply waiters, for RFC 2920 command groups.

    aiosmtplib keeps one reply pending and parses one reply per chunk received, so replies that
    arrive together (a pipelined group's three answers usually come in one packet) would wait
    in its buffer forever. In a group, every complete reply in the buffer goes to the next
    waiter, in order. Outside a group it is aiosmtplib's protocol unchanged.

    Written against aiosmtplib 5.1.3 (pinned in requirements.lock; tests/test_pipelining.py
    checks the private names it reads: _buffer, _loop,
    _read_response_from_buffer). The client's protocol becomes one of these by a class change
    right after connect (aiosmtplib builds its protocol inside SMTP._create_connection); the
    subclass adds no state of its own but `_group` and its watch timer, which have class
    defaults."""

    _group: deque[asyncio.Future[aiosmtplib.SMTPResponse]] | None = None
    _deadline = 0.0  # when the replies now awaited are late (loop time)
    _watch: asyncio.TimerHandle | None = None  # the timer that checks it
    _waiting = False  # a replies() call is waiting now

    def data_received(self, data: bytes) -> None:
        group = self._group
        if group is None:
            super().data_received(data)
            return
        self._buffer.extend(data)
        if len(self._buffer) > MAX_RESPONSE_LENGTH * 4:
            del self._buffer[:]
            self._unreadable("response too long")
            return
        while group:
            try:
                response = self._read_response_from_buffer()
            except Exception as exc:  # a malformed reply: the replies are out of step
                self._unreadable(str(exc))
                return
            if response is None:
                return
            waiter = group.popleft()
            if not waiter.done():
                waiter.set_result(response)
        self._group = None  # every reply expected is in: aiosmtplib's own commands may run

    def _unreadable(self, why: str) -> None:
        """A reply that cannot be read inside a group: which waiter it answered, and what the
        later replies answer, is unknown, so the session ends as if dropped (every message in
        flight under the one-possible-duplicate rule) rather than go on out of step."""
        self._fail_group(aiosmtplib.SMTPServerDisconnected(f"unreadable reply: {why}"))
        if self.transport is not None:
            self.transport.close()

    def _fail_group(self, exc: BaseException) -> None:
        group, self._group = self._group, None
        for waiter in group or ():
            if not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: nobody may await the later ones

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail_group(lost)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        self._fail_group(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return super().eof_received()

    def expect(self, data: bytes, replies: int) -> list[asyncio.Future[aiosmtplib.SMTPResponse]]:
        """Write `data` (whole commands, or message content and its terminator, or both) in
        one go; the next `replies` replies, after any still expected, go to the waiters
        returned, in order."""
        if self.transport is None or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        waiters = [self._loop.create_future() for _ in range(replies)]
        if self._group is None:
            self._group = deque()
        self._group.extend(waiters)
        self.write(data)
        return waiters

    async def replies(
        self, waiters: list[asyncio.Future[aiosmtplib.SMTPResponse]], seconds: float | None
    ) -> list[aiosmtplib.SMTPResponse]:
        """The replies `expect` promised; raises as aiosmtplib's commands do. The caller
        closes the session on a timeout (as aiosmtplib does): the replies are out of step.

        Replies already in (the next envelope's, which come with this message's final reply)
        are returned without a timer. Otherwise the wait is bounded by one watch timer per
        session, moved on by each wait, rather than a timer and a timeout context a wait
        (asyncio.timeout cost ~8% of a sending worker's CPU in py-spy)."""
        if seconds is None or all(waiter.done() for waiter in waiters):
            return [await waiter for waiter in waiters]
        self._deadline = self._loop.time() + seconds
        if self._watch is None:
            self._watch = self._loop.call_at(self._deadline, self._check_deadline)
        self._waiting = True
        try:
            return [await waiter for waiter in waiters]
        finally:
            self._waiting = False

    def _check_deadline(self) -> None:
        """The watch timer: when the latest wait's deadline has passed with replies still
        expected, they all fail with a timeout; if a later wait moved it on, wait for that.
        Replies nobody waits for yet (the next envelope's, between two sends) are left alone:
        their wait, when it comes, has the whole timeout (found in review)."""
        self._watch = None
        if self._group is None or not self._waiting:  # the next wait starts a new watch
            return
        now = self._loop.time()
        if now >= self._deadline:
            self._fail_group(
                aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
            )
        else:
            # uvloop's timers keep milliseconds and may fire just early: not again before 1 ms.
            self._watch = self._loop.call_at(max(self._deadline, now + 0.001), self._check_deadline)


def _pipelining_protocol(client: aiosmtplib.SMTP) -> None:
    """Make the session's protocol a PipeliningProtocol (aiosmtplib builds a plain one inside
    SMTP._create_connection), then hand it to its transport again: uvloop's transports keep
    the protocol's bound data_received from when they were made, set_protocol renews it."""
    protocol = client.protocol
    if type(protocol) is SMTPProtocol and protocol.transport is not None:
        protocol.__class__ = PipeliningProtocol
        protocol.transport.set_protocol(protocol)


def pipelining(client: aiosmtplib.SMTP) -> PipeliningProtocol | None:
    """The session's protocol when the server offers PIPELINING (RFC 2920), else None."""
    protocol = client.protocol
    if isinstance(protocol, PipeliningProtocol) and client.supports_extension("pipelining"):
        return protocol
    return None


@dataclass(frozen=True)
class _Ahead:
    """The next message's envelope, written with this message's content: its replies wait."""

    sender: str
    recipient: str
    replies: list[asyncio.Future[aiosmtplib.SMTPResponse]]


def _envelope(sender: str, recipient: str) -> bytes:
    return b"MAIL FROM:<%b>\r\nRCPT TO:<%b>\r\nDATA\r\n" % (_address(sender), _address(recipient))


def _code_of(exc: aiosmtplib.SMTPResponseException | aiosmtplib.SMTPRecipientsRefused) -> int:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return exc.recipients[0].code if exc.recipients else 0
    return exc.code


def _envelope_or_none(sender: str, recipient: str | None) -> bytes | None:
    """The envelope to write ahead for `recipient`, or None when there is none or it cannot
    go on the wire as ASCII (that message then takes send()'s other paths)."""
    if recipient is None or not recipient.isascii():
        return None
    try:
        return _envelope(sender, recipient)
    except ValueError:
        return None


class Connection:
    """One open SMTP session; send() runs one transaction per recipient: pipelined when the
    server offers PIPELINING, else one command at a time.

    Pipelined, a message costs one write and one round trip when the caller names the next
    recipient (`then`): its content, its terminator and the next message's MAIL, RCPT and DATA
    go together, and its final reply comes back with the next envelope's three. The next
    send() must then be for that recipient (else the session is dropped: the server waits in
    DATA, and a dropped session delivers nothing)."""

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self._client = client
        self._pipelined = pipelining(client)
        self._ahead: _Ahead | None = None
        self._open = False

    @property
    def in_data(self) -> bool:
        """A transaction may be open (an envelope written ahead, or a send that did not finish:
        cancelled, or failed in a way it does not map): the server may be waiting for content,
        so the session can only be dropped, never QUIT (QUIT would become message text)."""
        return self._ahead is not None or self._open

    async def send(
        self, sender: str, recipient: str, message: bytes, *, then: str | None = None
    ) -> None:
        self._open = True
        try:
            await self._send(sender, recipient, message, then)
        except SendError:
            self._open = False  # mapped: the transaction ended (or the session is gone)
            raise
        self._open = False

    async def _send(self, sender: str, recipient: str, message: bytes, then: str | None) -> None:
        ahead = self._ahead
        if ahead is not None and (ahead.sender, ahead.recipient) != (sender, recipient):
            self._client.close()
            raise ConnectionLost("the envelope written ahead was for another message")
        try:
            if sender.isascii() and recipient.isascii():
                if self._pipelined is not None:
                    await self._pipelined_transaction(
                        self._pipelined, sender, recipient, message, then
                    )
                else:
                    await self._transaction(sender, recipient, message)
                errors: dict[str, aiosmtplib.SMTPResponse] = {}
            else:
                # An internationalised address (accepted at signup) needs SMTPUTF8.
                if isinstance(message, Stuffed):  # aiosmtplib stuffs for itself
                    message = message.unstuffed()
                errors, _ = await self._client.sendmail(
                    sender, [recipient], message, mail_options=["SMTPUTF8"]
                )
        except ValueError as exc:
            # An address aiosmtplib will not put on the wire. Nothing was sent; retried along
            # the ladder (then failed), never a suppression: it may be our own sender's fault.
            raise SendError(f"address refused by the SMTP client: {exc}") from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            if exc.code == 421 or not self._client.is_connected:
                raise ConnectionLost(f"{exc.code} {exc.message}", code=exc.code) from exc
            # MAIL FROM refused: about our envelope sender (or the relay's policy), never about
            # the recipient, so it must not suppress them; retried until the operator fixes it.
            raise SendError(f"sender refused: {exc.code} {exc.message}", code=exc.code) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            # RFC 6531: the relay cannot take a non-ASCII address; retrying cannot help.
            raise SendError(f"553 5.6.7 {exc}", code=553, permanent=True) from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            code = refused.code if refused else 550
            # "550 5.1.1 …", not the exception's tuple repr: `suppresses` reads the status code.
            text = f"{refused.code} {refused.message}" if refused else str(exc)
            if code == 421 or not self._client.is_connected:
                # The relay closed the session: this message waits, the batch reconnects.
                raise ConnectionLost(text, code=code) from exc
            raise SendError(text, code=code, permanent=code >= 500) from exc
        except aiosmtplib.SMTPServerDisconnected as exc:
            raise ConnectionLost(f"connection lost: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:  # the server is closing the session
                raise ConnectionLost(f"{exc.code} {exc.message}", code=exc.code) from exc
            raise SendError(
                f"{exc.code} {exc.message}", code=exc.code, permanent=exc.code >= 500
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
        if errors:
            response = next(iter(errors.values()))
            raise SendError(
                f"{response.code} {response.message}",
                code=response.code,
                permanent=response.code >= 500,
            )

    async def _transaction(self, sender: str, recipient: str, message: bytes) -> None:
        """sendmail() for one ASCII recipient, raising the same exceptions, without its four
        address parses a message (~7% of a sending worker's CPU, measured): the recipient was
        validated at signup and the sender at start-up (Settings._mail_from). Control characters
        are still refused by execute_command (ValueError)."""
        client = self._client
        try:
            response = await client.execute_command(b"MAIL", b"FROM:<" + sender.encode() + b">")
            if response.code != 250:
                raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
            response = await client.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
            if response.code not in (250, 251):
                refused = aiosmtplib.SMTPRecipientRefused(
                    response.code, response.message, recipient
                )
                raise aiosmtplib.SMTPRecipientsRefused([refused])
            await self._data(message)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused, ValueError):
            # As sendmail does: clear the envelope so the session can take the next message.
            if client.is_connected:
                with suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await client.rset()
            raise

    async def _pipelined_transaction(
        self,
        protocol: PipeliningProtocol,
        sender: str,
        recipient: str,
        message: bytes,
        then: str | None,
    ) -> None:
        """RFC 2920: MAIL, RCPT and DATA in one write (or already written with the previous
        message) and their three replies read in order; then, after 354, the content and its
        terminator (and the next envelope) in one write and the final reply. Same exceptions
        as _transaction, so a failure is mapped exactly as before."""
        client = self._client
        ahead, self._ahead = self._ahead, None
        try:
            try:
                waiters = (
                    ahead.replies if ahead else protocol.expect(_envelope(sender, recipient), 3)
                )
                mail, rcpt, data = await protocol.replies(waiters, client.timeout)
                if data.code == 354 and (mail.code != 250 or rcpt.code not in (250, 251)):
                    # A server that took DATA although the envelope failed (RFC 2920 3.1
                    # forbids it, some do): end an empty message, and do not count on it.
                    await protocol.replies(protocol.expect(b".\r\n", 1), client.timeout)
                if mail.code != 250:
                    raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, sender)
                if rcpt.code not in (250, 251):
                    refused = aiosmtplib.SMTPRecipientRefused(rcpt.code, rcpt.message, recipient)
                    raise aiosmtplib.SMTPRecipientsRefused([refused])
                if data.code != 354:
                    raise aiosmtplib.SMTPDataError(data.code, data.message)
                following = _envelope_or_none(sender, then)
                waiters = protocol.expect(
                    data_payload(message) + (following or b""), 4 if following else 1
                )
                if following and then is not None:
                    self._ahead = _Ahead(sender, then, waiters[1:])
                (done,) = await protocol.replies(waiters[:1], client.timeout)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
                self._ahead = None
                client.close()  # as data() does: a lost or timed-out session is closed
                raise
            if done.code != 250:
                raise aiosmtplib.SMTPDataError(done.code, done.message)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
            # As sendmail does: clear the envelope so the session can take the next message
            # (RFC 2920: after a refused RCPT the server answered DATA with 503/554). Not when
            # the next envelope is on its way: DATA's final reply ended this transaction.
            # A 421 closes the session (as aiosmtplib's execute_command does).
            if _code_of(exc) == 421:
                self._ahead = None
                client.close()
            elif client.is_connected and self._ahead is None:
                with suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await client.rset()
            raise

    async def _data(self, message: bytes) -> None:
        """client.data() without its two regular expressions over every message (~15% of a
        sending worker's CPU in py-spy): data_payload() gives the same bytes for messages
        built with CRLF line endings (notifier.mime) at a fraction of the cost. Same errors,
        and like data(), a lost or timed-out connection is closed."""
        client = self._client
        try:
            start = await client.execute_command(b"DATA")
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol = client.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            # No await between the write and read_response(): the reply cannot arrive unread.
            protocol.write(data_payload(message))
            done = await protocol.read_response(timeout=client.timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            client.close()
            raise
        if done.code != 250:
            raise aiosmtplib.SMTPDataError(done.code, done.message)

    @property
    def is_connected(self) -> bool:
        return self._client.is_connected


_fqdn: str | None = None


async def _local_hostname() -> str:
    """The name EHLO gives, looked up once per process: aiosmtplib runs socket.getfqdn() (a
    reverse DNS lookup, ~1 ms here, a thread hop, and seconds where DNS is slow) on every
    connection otherwise, and a send batch opens one."""
    global _fqdn
    if _fqdn is None:
        _fqdn = await asyncio.to_thread(socket.getfqdn)
    return _fqdn


class Mailer:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.config = SMTPConfig.from_url(url)
        self.timeout = timeout

    def _client(self) -> aiosmtplib.SMTP:
        cfg = self.config
        tls_context = None
        if not cfg.validate_certs:
            tls_context = ssl.create_default_context()
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password,
            use_tls=cfg.use_tls,
            start_tls=cfg.start_tls,
            validate_certs=cfg.validate_certs,
            tls_context=tls_context,
            timeout=self.timeout,
        )

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Connection]:
        client = self._client()
        client.local_hostname = await _local_hostname()
        try:
            await client.connect()
            _pipelining_protocol(client)
            if client.is_ehlo_or_helo_needed:  # Connection._transaction sends MAIL itself
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot reach SMTP server {self.config!r}: {exc}") from exc
        conn = Connection(client)
        try:
            yield conn
        finally:
            if conn.in_data:  # an envelope written ahead was never used: drop the session
                client.close()
            elif client.is_connected:
                try:
                    await asyncio.wait_for(client.quit(), timeout=5)
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()

    async def send_one(self, sender: str, recipient: str, message: bytes) -> None:
        async with self.connect() as conn:
            await conn.send(sender, recipient, message)


# ---- is the relay there? (start-up warning, /readyz detail) -----------------------------------
# A quick TCP connect with a timeout, cached; it says nothing about accepting mail.

CONNECT_TIMEOUT = 1.0
CACHE_SECONDS = 30.0


@dataclass
class RelayProbe:
    host: str
    port: int
    timeout: float = CONNECT_TIMEOUT
    _last: tuple[float, str | None] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, smtp_url: str) -> RelayProbe:
        parts = urlsplit(smtp_url)
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
        return cls(parts.hostname or "localhost", port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def problem(self) -> str | None:
        """None when a connection opens, else why not ("refused", "timed out" …); cached."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < CACHE_SECONDS:
            return self._last[1]
        found: str | None = None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        except TimeoutError:
            found = f"no answer within {self.timeout:g} s"
        except OSError as exc:
            found = exc.strerror or type(exc).__name__
        else:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
        self._last = (time.monotonic(), found)
        return found

    def warning(self, problem: str) -> str:
        return (
            f"SMTP relay {self.address} not reachable ({problem}): mail waits and is retried "
            "until it is; start a mail catcher or set NOTIFIER_SMTP_URL"
        )
