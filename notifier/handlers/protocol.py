"""aiohttp's own answers to requests it cannot parse (a URL over 8190 bytes, junk after a body),
given the service's error body and security headers, never an echo of the request's bytes, and
logged as one line instead of a traceback each (log inflation)."""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from notifier.handlers.middleware import secure_defaults
from notifier.metrics import HTTP_REQUESTS

log = logging.getLogger("notifier.web")


class NotifierRequestHandler(RequestHandler):
    """aiohttp's connection handler with its error answer replaced (aiohttp calls handle_error
    for a request it could not parse, before any middleware could see it)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        rid = uuid.uuid4().hex
        if status >= 500:  # a bug of ours reached aiohttp: keep the traceback for it
            log.error("unhandled error [%s]", rid, exc_info=exc)
        else:
            # The client's mistake: one line, and never exc's message (it quotes the request).
            log.info("unreadable request: %d %s [%s]", status, type(exc).__name__, rid)
        if request.writer.output_size > 0:  # as aiohttp does: nothing more can be said
            raise ConnectionError("response already started; cannot send an error")
        reason = (
            HTTPStatus(status).phrase.lower() if status in HTTPStatus._value2member_map_ else ""
        )
        text = "the request could not be read" if status < 500 else "internal error"
        response = web.json_response(
            {"error": f"{reason}: {text}" if reason else text}, status=status
        )
        secure_defaults(response.headers)
        response.headers["X-Request-Id"] = rid
        response.force_close()
        HTTP_REQUESTS.labels(route="unparsed", method="-", status=str(status)).inc()
        return response


class NotifierServer(web.Server):
    def __call__(self) -> RequestHandler:
        # web.Server builds aiohttp's RequestHandler with its own (private) loop and arguments.
        return NotifierRequestHandler(self, loop=self._loop, **self._kwargs)


class NotifierRunner(web.AppRunner):
    """web.AppRunner whose server answers unparseable requests like the app answers errors."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        kwargs: dict[str, Any] = dict(server._kwargs)  # rebuilt, same arguments
        return NotifierServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **kwargs,
        )
