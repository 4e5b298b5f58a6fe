"""A real SMTP server for tests (aiosmtpd on port 0) that records messages, with failure knobs.

Knobs, never magic strings:
    smtp.reject["bob@example.org"] = "451 4.3.0 try later"          # every attempt
    smtp.reject["bob@example.org"] = ["451 4.3.0 a", "451 4.3.0 b"]  # these, then accept
    smtp.drop_after_data.add("carol@example.org")  # store the message, then drop before 250
    smtp.reject_sender = "553 5.1.8 sender domain does not exist"  # MAIL FROM refused
    smtp.pipelining = False  # EHLO without PIPELINING (RFC 2920), which is offered by default
    smtp.on_data = check  # awaited with each recipient once its message is in, before the 250
    await smtp.stop(); await smtp.start()          # an outage on the same port
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_to: str
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingSMTP:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Received] = field(default_factory=list)
    reject: dict[str, str | list[str]] = field(default_factory=dict)
    drop_after_data: set[str] = field(default_factory=set)
    reject_sender: str | None = None  # the answer to every MAIL FROM while set
    slow: dict[str, float] = field(default_factory=dict)  # seconds before answering RCPT TO
    reject_data: dict[str, str] = field(default_factory=dict)  # answer to a message's data, once
    pipelining: bool = True  # offer PIPELINING in the EHLO answer
    on_data: Callable[[str], Awaitable[None]] | None = None  # see the module's docstring
    transactions: int = 0  # DATA commands that reached the server
    connections: int = 0
    _server: asyncio.AbstractServer | None = None
    _protocols: set[SMTP] = field(default_factory=set)

    # aiosmtpd handler hooks -------------------------------------------------------------
    async def handle_EHLO(  # aiosmtpd's hook name (the 5-argument form)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:  # before the last line, "250 HELP"
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.reject_sender is not None:
            return self.reject_sender
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.slow:
            await asyncio.sleep(self.slow.pop(address))  # once
        answer = self._answer_for(address)
        if answer is not None:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.transactions += 1
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.reject_data:
                return self.reject_data.pop(rcpt)  # once
        content = envelope.original_content or b""
        for rcpt in envelope.rcpt_tos:
            if self.on_data is not None:
                await self.on_data(rcpt)
            self.messages.append(Received(str(envelope.mail_from), rcpt, content))
            if rcpt in self.drop_after_data and server.transport is not None:
                cast(
                    asyncio.Transport, server.transport
                ).abort()  # stored, but the client never sees 250
        return "250 2.0.0 Message accepted"

    def _answer_for(self, address: str) -> str | None:
        rule = self.reject.get(address)
        if rule is None:
            return None
        if isinstance(rule, str):
            return rule
        if rule:
            return rule.pop(0)
        return None

    # lifecycle -------------------------------------------------------------------------
    def _factory(self) -> SMTP:
        protocol = SMTP(self, hostname="smtp.test", ident="test-smtp", enable_SMTPUTF8=True)
        self._protocols.add(protocol)
        self.connections += 1
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open session: an outage."""
        if self._server is not None:
            self._server.close()
            for protocol in list(self._protocols):
                if protocol.transport is not None:
                    cast(asyncio.Transport, protocol.transport).abort()
            self._protocols.clear()
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if m.rcpt_to == address]
