"""The serving host under attack: slow headers, oversized headers, one client hogging sockets.

A hostile client (or a broken proxy) that opens sockets and sends a request's
headers slowly, or never, must not keep the service from answering anyone
else; a header block over 16 KiB is refused; one remote address cannot hold
more than its share of connections (pprm.net.guard).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState

from pprm.net.guard import MAX_HEADER_BYTES, ConnectionGuard, guarded_protocol
from pprm.net.server import server_config
from pprm.net.service import create_app
from tests.helpers import new_state


@contextmanager
def guarded_server(directory: str, guard: ConnectionGuard) -> Iterator[tuple[str, int]]:
    """``pprm serve``'s own uvicorn configuration (guard included), from a thread on a loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    config = server_config(create_app(directory), log_level="error", guard=guard)
    config.timeout_graceful_shutdown = 1
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        server.should_exit = True
        t.join(20)
        sock.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return str(new_state(tmp_path / "fr", "FR").dir)


class SlowFlood:
    """``n`` sockets held open: half send nothing, half a request line and one header line per ``every`` s.

    Sockets the server closes are reopened at once, as a persistent attacker would.
    """

    def __init__(self, host: str, port: int, n: int, every: float) -> None:
        self.addr = (host, port)
        self.n = n
        self.every = every
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=5)
        s.setblocking(False)
        if i % 2:
            s.send(b"GET /v1/health HTTP/1.1\r\nHost: pprm\r\n")
        return s

    def _alive(self, s: socket.socket) -> bool:
        try:
            return s.recv(1) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _run(self) -> None:
        socks = [self._open(i) for i in range(self.n)]
        while not self._stop.wait(self.every):
            for i, s in enumerate(socks):
                ok = self._alive(s)
                if ok and i % 2:
                    try:
                        s.send(b"X-Slow: 1\r\n")
                    except OSError:
                        ok = False
                if not ok:
                    s.close()
                    socks[i] = self._open(i)
                    self.reopened += 1
        for s in socks:
            s.close()

    def __enter__(self) -> SlowFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)


def test_slow_header_sockets_do_not_starve_the_service(state_dir: str) -> None:
    # 300 slow sockets, held (and reopened when closed) for 12 s, against a
    # 2 s header timeout; a legitimate health check every 0.2 s must be
    # answered, promptly, all along.
    guard = ConnectionGuard(header_timeout=2.0)
    with guarded_server(state_dir, guard) as (host, port), SlowFlood(host, port, 300, 0.5) as flood:
        url = f"http://{host}:{port}/v1/health"
        statuses: list[int] = []
        worst = 0.0
        end = time.monotonic() + 12
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < end:
                t0 = time.monotonic()
                statuses.append(client.get(url, headers={"Connection": "close"}).status_code)
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.2)
    assert statuses and set(statuses) == {200}, statuses
    assert worst < 2.0, f"a health check took {worst:.2f} s"
    # The flood was real: the guard closed slow sockets, and the attacker reopened them.
    assert guard.closed_slow + guard.closed_evicted > 300 and flood.reopened > 300


def _raw(host: str, port: int, header: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: pprm\r\nConnection: close\r\n" + header + b"\r\n")
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_header_blocks_over_16_kib_are_refused(state_dir: str) -> None:
    guard = ConnectionGuard()
    with guarded_server(state_dir, guard) as (host, port):
        small = b"X-Pad: " + b"a" * (MAX_HEADER_BYTES - 1024) + b"\r\n"
        assert _raw(host, port, small).startswith(b"HTTP/1.1 200")
        for size in (MAX_HEADER_BYTES + 64, 100_000):
            big = b"X-Pad: " + b"a" * size + b"\r\n"
            assert _raw(host, port, big).startswith(b"HTTP/1.1 431")
    assert guard.refused_header == 2


class _Transport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("192.0.2.1", 8000)}.get(name, default)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_one_remote_address_holds_at_most_its_share_of_connections() -> None:
    async def run() -> None:
        guard = ConnectionGuard(max_per_client=3)
        config = uvicorn.Config(lambda *a: None)
        config.load()
        cls = guarded_protocol(guard)
        state = ServerState()

        def connect(host: str) -> tuple[Any, _Transport]:
            proto = cls(config=config, server_state=state, app_state={})
            transport = _Transport((host, 40000))
            proto.connection_made(transport)
            return proto, transport

        first = [connect("203.0.113.7") for _ in range(3)]
        assert not any(t.closed for _p, t in first) and guard.per_client["203.0.113.7"] == 3
        _p, fourth = connect("203.0.113.7")
        assert fourth.closed and guard.refused_client == 1
        _p, other = connect("198.51.100.2")  # another address is not affected
        assert not other.closed
        first[0][0].connection_lost(None)    # a slot frees up when a connection ends
        _p, again = connect("203.0.113.7")
        assert not again.closed
        # Loopback is exempt (the operator's own tools share one address).
        assert not any(connect("127.0.0.1")[1].closed for _ in range(5))
        for proto, _t in first[1:]:
            proto.connection_lost(None)

    asyncio.run(run())
