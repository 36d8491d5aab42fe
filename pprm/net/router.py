"""A relay between state services, in the place of Prüm II's central router.

The router holds no state keys and no state directory: only a map from state
codes to service addresses. It forwards the bytes of each request and reply
unchanged. It cannot read a query's case, purpose or probe (boxed to the
recipient), and it cannot alter any message undetected (every message is
signed by its sender and verified by its recipient before anything else).

What it does see: who talks to whom (the cleartext headers, the paths),
when, and how many bytes. That metadata is the residual risk of any relay;
see docs/THREAT_MODEL.md.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pprm.net.body import read_body
from pprm.net.client import CONNECT_TIMEOUT, REQUEST_SLACK, read_limited
from pprm.net.directory import check_url
from pprm.net.wire import MAX_ANSWER, MAX_DELIVERY, MAX_FOLLOWUP, MAX_WAIT, OCTETS, QUERY_ID, STATE_CODE, error_body

__all__ = ["create_router_app"]

log = logging.getLogger("pprm.net.router")

# What may be forwarded, and the largest body each route takes. Anything else
# is refused here: the router is not a general proxy into the states' hosts.
_POST_LIMITS = {"queries": MAX_DELIVERY, "followups": MAX_FOLLOWUP}
_GET_ROUTES = ("card", "health")
# Response headers passed back; hop-by-hop and server headers are not.
_KEEP_HEADERS = ("content-type", "retry-after")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def _allowed(method: str, rest: str) -> bool:
    parts = rest.split("/")
    if method == "POST":
        return len(parts) == 1 and parts[0] in _POST_LIMITS
    if len(parts) == 1:
        return parts[0] in _GET_ROUTES
    return (len(parts) == 3 and parts[0] == "answers" and STATE_CODE.fullmatch(parts[1]) is not None
            and QUERY_ID.fullmatch(parts[2]) is not None)


def create_router_app(peers: Mapping[str, str], *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The ASGI application of a router.

    Args:
        peers: state code -> base URL of its service.
        transport: httpx transport override (tests).

    Returns:
        A Starlette app forwarding ``/route/{STATE}/v1/...`` to that state.
    """
    table = {code: check_url(url) for code, url in peers.items()}
    holder: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # trust_env=False: proxy settings of the host must not reroute state traffic.
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            holder["client"] = client
            yield

    async def health(request: Request) -> Response:
        return JSONResponse({"router": True, "ok": True, "peers": sorted(table)})

    async def forward(request: Request) -> Response:
        state = request.path_params["state"]
        rest = request.path_params["rest"]
        base = table.get(state)
        if base is None:
            return _error(404, "unknown-peer", f"this router does not know state {state}")
        if not _allowed(request.method, rest):
            return _error(404, "not-found", "no such route")
        content: bytes | None = None
        headers: dict[str, str] = {}
        if request.method == "POST":
            body = await read_body(request, _POST_LIMITS[rest])
            if isinstance(body, Response):
                return body
            content = body
            headers["content-type"] = OCTETS
        params: dict[str, str] = {}
        wait = 0.0
        if "wait" in request.query_params:
            try:
                wait = min(max(float(request.query_params["wait"]), 0.0), MAX_WAIT)
            except ValueError:
                return _error(400, "message", "wait must be a number of seconds")
            params["wait"] = f"{wait:.3f}"
        client = holder["client"]
        try:
            req = client.build_request(request.method, f"{base}/v1/{rest}", content=content, headers=headers,
                                       params=params, timeout=httpx.Timeout(wait + REQUEST_SLACK,
                                                                            connect=CONNECT_TIMEOUT))
            resp = await client.send(req, stream=True)
            reply = await read_limited(resp, MAX_ANSWER)
        except httpx.TimeoutException:
            return _error(504, "timeout", f"{state} did not answer in time")
        except httpx.HTTPError as exc:
            return _error(502, "unreachable", f"{state} is unreachable ({type(exc).__name__})")
        if reply is None:
            return _error(502, "unreachable", f"{state} sent more than {MAX_ANSWER} bytes")
        log.info("%s %s -> %s %d (%d B)", request.method, rest.split("/")[0], state, resp.status_code, len(reply))
        kept = {k: v for k, v in resp.headers.items() if k.lower() in _KEEP_HEADERS}
        return Response(reply, status_code=resp.status_code, headers=kept)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, "not-found", "no such route")

    async def bad_method(request: Request, exc: Exception) -> Response:
        return _error(405, "method", "method not allowed on this route")

    handlers: dict[Any, Callable[[Request, Exception], Any]] = {404: not_found, 405: bad_method}
    routes = [
        Route("/v1/health", health, methods=["GET"]),
        Route("/route/{state}/v1/{rest:path}", forward, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
