"""Running an ASGI app on uvicorn, with the address known before it serves.

The socket is bound here, not by uvicorn, so that ``--port 0`` works: the
caller learns the port the kernel chose (tests, examples) from the first
line the process prints.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from pprm.errors import ParameterError
from pprm.net.guard import MAX_HEADER_BYTES, ConnectionGuard, guarded_protocol

__all__ = ["bind", "run", "is_loopback", "server_config"]

# uvicorn's defaults, made explicit: idle keep-alive connections are closed
# after 5 s; a graceful shutdown waits at most 10 s for requests in flight.
KEEP_ALIVE = 5
GRACEFUL = 10
# Connections served at once before uvicorn answers 503: far above what a
# handful of peers need, far below what exhausts file descriptors.
MAX_CONNECTIONS = 256


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: the kernel picks one).

    Raises:
        ParameterError: the address cannot be bound.
    """
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise ParameterError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def server_config(app: Starlette, *, log_level: str = "warning",
                  guard: ConnectionGuard | None = None) -> uvicorn.Config:
    """uvicorn's configuration for pprm's services: limits, timeouts and the connection guard.

    Args:
        app: the ASGI app.
        log_level: uvicorn's log level; ``info`` adds one access line per request.
        guard: the connection guard (default: a fresh one with the module's limits).

    Returns:
        The configuration (h11, the guard's protocol, headers capped at 16 KiB).
    """
    return uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"),
                          timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=GRACEFUL,
                          limit_concurrency=MAX_CONNECTIONS, lifespan="on", server_header=False,
                          http=guarded_protocol(guard or ConnectionGuard()),
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES)


def run(app: Starlette, sock: socket.socket, *, log_level: str = "warning",
        started: Callable[[], None] | None = None) -> None:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM, then shut down gracefully.

    Args:
        app: the ASGI app.
        sock: a listening socket from :func:`bind`.
        log_level: uvicorn's log level; ``info`` adds one access line per request.
        started: called once the app's startup has run.
    """
    server = uvicorn.Server(server_config(app, log_level=log_level))
    if started is not None:
        original = server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await original(sockets=sockets)
            if not server.should_exit:
                started()

        server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])
