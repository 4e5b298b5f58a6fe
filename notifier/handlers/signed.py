"""Bodies of HMAC-signed routes (the sync pipeline's): the header is checked before the body
is read, large bodies are read a few at a time, within a time limit, and never held in memory
before their signature is proven."""

from __future__ import annotations

import asyncio
import time
from tempfile import SpooledTemporaryFile

from aiohttp import web

from notifier.core.signing import HEADER, BodyVerifier, check_header
from notifier.handlers.bodies import CHUNK, BodyTimeout, body_timeout

# Bodies up to this size are read at once; larger ones (and chunked ones of unknown size) wait
# for one of NOTIFIER_LARGE_BODIES_AT_ONCE places, and are spooled to a temporary file while
# their HMAC is computed: before the signature is proven, a body costs one chunk of memory.
LARGE_BODY = 64 * 1024
LARGE_BODY_GATE = web.AppKey("large_body_gate", asyncio.Semaphore)
GATE_WAIT_MAX = 10.0  # seconds a large body waits for a place before a 503 (at most half
# the body timeout, so a place held by a slow sender frees later than a waiter gives up)


class Busy(Exception):
    """Every place for a large body is taken: 503 with Retry-After."""


async def read_signed_body(request: web.Request, secrets: list[str], limit: int) -> bytes:
    """The body, once its `Notifier-Signature` is proven. SignatureError (401) from the header
    alone before anything is read; 413 over `limit`; BodyTimeout (408) for a slow sender;
    Busy (503) when too many large bodies are being read."""
    timestamp, candidates = check_header(request.headers.get(HEADER, ""), time.time())
    size = request.content_length
    if size is not None and size > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    verifier = BodyVerifier(timestamp, candidates, secrets)
    if size is not None and size <= LARGE_BODY:
        body = await _read(request, verifier, limit)
    else:
        gate = request.app[LARGE_BODY_GATE]
        try:
            async with asyncio.timeout(min(body_timeout(request) / 2, GATE_WAIT_MAX)):
                await gate.acquire()
        except TimeoutError:
            raise Busy from None
        try:
            body = await _read(request, verifier, limit)
        finally:
            gate.release()
    verifier.check()
    return body


async def _read(request: web.Request, verifier: BodyVerifier, limit: int) -> bytes:
    size = 0
    with SpooledTemporaryFile(max_size=LARGE_BODY) as spool:
        try:
            async with asyncio.timeout(body_timeout(request)):
                async for chunk in request.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                    verifier.update(chunk)
                    spool.write(chunk)
        except TimeoutError:
            raise BodyTimeout from None
        verifier.check()  # before the body is read back into memory
        spool.seek(0)
        return spool.read()
