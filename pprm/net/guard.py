"""Connection guard for the HTTP service: slow or oversized request headers cannot starve it.

uvicorn starts no timer before a connection's first request line, and its
connection limit counts every open socket, so a few hundred sockets that
open a request and send one header line every few seconds (or nothing)
would hold the service at 503 for as long as they stay open. The guard, an
``h11`` protocol for uvicorn:

* gives every connection :data:`HEADER_TIMEOUT` seconds to deliver its
  request line and headers, then closes it;
* does not count a connection against uvicorn's connection limit until its
  headers are in: sockets that never send a request cannot push the
  service to 503;
* keeps at most :data:`MAX_PENDING` connections waiting for their headers
  and closes the oldest beyond that: a bigger flood evicts itself, while a
  legitimate request (headers in its first packet) waits for milliseconds
  only;
* caps open connections per remote address at :data:`MAX_PER_CLIENT`
  (loopback is exempt: there the operator's own tools and tests share one
  address);
* caps a request's line and header block at :data:`MAX_HEADER_BYTES`: beyond
  it the connection gets 431 and is closed before anything is parsed or
  dispatched (h11's own limit applies only to headers that arrive in pieces).

Keep-alive connections between requests are uvicorn's own business: its
keep-alive timer closes them after 5 s without a new request.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HEADER_TIMEOUT", "MAX_PENDING", "MAX_PER_CLIENT", "MAX_HEADER_BYTES", "ConnectionGuard",
           "guarded_protocol"]

# Seconds a connection has to deliver its request line and headers: a peer
# on a slow link sends a few hundred bytes of headers in well under a second.
HEADER_TIMEOUT = 10.0
# Connections waiting for their headers at once, before the oldest is closed:
# twice the service's limit on connections being served
# (pprm.net.server.MAX_CONNECTIONS); both together stay far below the usual
# 1,024 file descriptors.
MAX_PENDING = 512
# Open connections from one remote address (not loopback): a peer needs a
# handful (one per query in flight and a long poll).
MAX_PER_CLIENT = 32
# The largest header block accepted: pprm's own requests send under 1 KiB.
MAX_HEADER_BYTES = 16 * 1024


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConnectionGuard:
    """What one server's connections share: who is waiting for headers, and who holds how many sockets.

    Args:
        header_timeout: seconds allowed for the request line and headers.
        max_pending: connections waiting for headers before the oldest is closed.
        max_per_client: open connections per non-loopback address.
    """

    def __init__(self, header_timeout: float = HEADER_TIMEOUT, max_pending: int = MAX_PENDING,
                 max_per_client: int = MAX_PER_CLIENT) -> None:
        self.header_timeout = header_timeout
        self.max_pending = max_pending
        self.max_per_client = max_per_client
        self.pending: collections.OrderedDict[Any, asyncio.TimerHandle] = collections.OrderedDict()
        self.per_client: collections.Counter[str] = collections.Counter()
        self.closed_slow = 0
        self.closed_evicted = 0
        self.refused_client = 0
        self.refused_header = 0

    def __repr__(self) -> str:
        return f"ConnectionGuard({len(self.pending)} waiting for headers)"


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """An ``h11`` protocol class for ``uvicorn.Config(http=...)`` that enforces ``guard``."""

    class GuardedH11Protocol(H11Protocol):
        _host: str | None = None
        _head: bytearray
        _rejected = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._host = self.client[0] if self.client else None
            if not _is_loopback(self._host):
                assert self._host is not None
                if guard.per_client[self._host] >= guard.max_per_client:
                    guard.refused_client += 1
                    self._host = None
                    transport.close()
                    return
                guard.per_client[self._host] += 1
            # Not a served connection until its headers are in (uvicorn's limit counts this set).
            self.connections.discard(self)
            self._wait_for_headers()

        def _wait_for_headers(self) -> None:
            self._head = bytearray()
            loop = asyncio.get_running_loop()
            guard.pending[self] = loop.call_later(guard.header_timeout, self._too_slow)
            while len(guard.pending) > guard.max_pending:
                oldest, timer = guard.pending.popitem(last=False)
                timer.cancel()
                guard.closed_evicted += 1
                oldest.transport.close()

        def _too_slow(self) -> None:
            if guard.pending.pop(self, None) is not None:
                guard.closed_slow += 1
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._rejected:
                return  # drained, so that closing does not reset the 431 away
            if self in guard.pending and self.conn.their_state is h11.IDLE:
                self._head += data[:MAX_HEADER_BYTES + 4 - len(self._head)]
                if b"\r\n\r\n" not in self._head and len(self._head) > MAX_HEADER_BYTES:
                    guard.pending.pop(self).cancel()
                    guard.refused_header += 1
                    self._rejected = True
                    self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                         b"content-length: 0\r\nconnection: close\r\n\r\n")
                    asyncio.get_running_loop().call_later(1.0, self.transport.close)
                    return
            super().data_received(data)
            # Once h11 has parsed a request's headers, the client is no longer
            # "waiting for headers": it is being served.
            if self in guard.pending and self.conn.their_state is not h11.IDLE:
                guard.pending.pop(self).cancel()
                if not self.transport.is_closing():
                    self.connections.add(self)

        def connection_lost(self, exc: Exception | None) -> None:
            timer = guard.pending.pop(self, None)
            if timer is not None:
                timer.cancel()
            if self._host is not None and not _is_loopback(self._host):
                guard.per_client[self._host] -= 1
                if guard.per_client[self._host] <= 0:
                    del guard.per_client[self._host]
            super().connection_lost(exc)

    return GuardedH11Protocol
