"""Reading a request body within a size limit and a time limit.

The limit is enforced on the bytes as they arrive, not on a declared
Content-Length alone: a client can lie about it or stream without one.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from pprm.net.wire import OCTETS, error_body

__all__ = ["read_body", "BODY_TIMEOUT"]

# Seconds to receive a whole body: 16 MiB at 1 MB/s. A slower sender holds a
# connection slot for no good reason (slowloris).
BODY_TIMEOUT = 20.0
# An oversized body is read (and dropped) up to this many times the limit
# before the 413, within BODY_TIMEOUT; past it the connection is closed.
DRAIN_FACTOR = 2


async def read_body(request: Request, limit: int, timeout: float = BODY_TIMEOUT) -> bytes | Response:
    """The request body, or the JSON error response to send instead.

    Args:
        request: the incoming request; its content type must be octets.
        limit: the largest body accepted, in bytes.
        timeout: seconds allowed to receive the whole body.

    Returns:
        The body bytes, or a 413, 415, 408 or 400 error response.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != OCTETS:
        return JSONResponse(error_body("media-type", f"send messages as {OCTETS}"), status_code=415)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return JSONResponse(error_body("message", "malformed Content-Length"), status_code=400)
        if int(declared) > DRAIN_FACTOR * limit:
            return _too_large(limit)
        # A declared size a little over the limit is read and dropped below
        # before the 413, like an undeclared one: answering while the client
        # still sends and then closing makes the kernel reset the connection,
        # which can destroy the response before the client reads it.
    chunks: list[bytes] = []
    size = 0
    over = False
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    # Read and drop up to as much again, so that a client still
                    # sending a body a little too large reads the 413 instead
                    # of a connection closed under it; beyond that, close.
                    over = True
                    chunks.clear()
                    if size > DRAIN_FACTOR * limit:
                        break
                    continue
                chunks.append(chunk)
    except TimeoutError:
        return JSONResponse(error_body("timeout", f"the body did not arrive within {timeout:g} s"), status_code=408)
    except ClientDisconnect:
        return JSONResponse(error_body("message", "the client went away mid-body"), status_code=400)
    if over:
        return _too_large(limit)
    if size == 0:
        return JSONResponse(error_body("message", "the request body is empty"), status_code=400)
    return b"".join(chunks)


def _too_large(limit: int) -> Response:
    return JSONResponse(error_body("too-large", f"the body exceeds {limit} bytes"), status_code=413,
                        headers={"Connection": "close"})
