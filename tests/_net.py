"""Running state services and routers on loopback for the network tests.

Services run as real processes (``pprm serve DIR --port 0``) so that a test
can kill one; in-process servers (a thread running uvicorn) are used where a
test needs a deliberately broken peer or router.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn

__all__ = ["Proc", "spawn", "serve", "route", "thread_server", "dead_url", "wait_for"]


@dataclass
class Proc:
    """A ``pprm serve`` or ``pprm route`` process and the URL it printed."""

    popen: subprocess.Popen[str]
    url: str
    args: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.popen.kill()
        self.popen.wait(10)

    def stop(self) -> tuple[int, str]:
        """SIGTERM and wait; returns (exit code, stderr)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            _, err = self.popen.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate()
        return self.popen.returncode, err


def spawn(args: list[str], timeout: float = 60.0) -> Proc:
    """Start ``pprm ARGS`` and wait for its 'listening on URL' line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "pprm.cli.main", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    assert p.stdout is not None
    line = ""
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if "listening on" in line or not line:
            break
    if "listening on" not in line:
        p.kill()
        _, err = p.communicate()
        raise RuntimeError(f"pprm {' '.join(args)} did not start: {err.strip()[-500:]}")
    return Proc(p, line.split()[-1], args)


def serve(directory: str) -> Proc:
    """``pprm serve DIR`` on a free loopback port."""
    return spawn(["serve", str(directory), "--port", "0"])


def route(peers: dict[str, str], path: str) -> Proc:
    """``pprm route`` over a peers file written to ``path``."""
    with open(path, "w") as fh:
        json.dump(peers, fh)
    return spawn(["route", "--peers", path, "--port", "0"])


@contextlib.contextmanager
def thread_server(app: object) -> Iterator[str]:
    """Serve an ASGI app from a thread on a free loopback port; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(app, log_level="error", lifespan="on", timeout_graceful_shutdown=1)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(20)
        sock.close()


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was just released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def wait_for(predicate: object, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")
