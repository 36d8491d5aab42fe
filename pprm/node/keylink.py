"""The link between a state's front and its key service: signed, boxed frames over a local socket.

A split state runs two processes (docs/DESIGN.md, "Key separation"): the
front (network, protocol, policy, the encrypted gallery, the state's identity)
and the key service (the CKKS secret key, the token key, the blind profile's
plaintext database). They talk over a unix socket, or a loopback TCP port,
in frames::

    b"PKL1" | kind (1 byte: 1 request, 2 response) | Ed25519 signature (64) | box

The box is X25519 + XSalsa20-Poly1305 from the sender to the receiver; the
signature covers the kind and the box, and is checked before the box is
opened or anything is parsed. Each side pins the other's public keys when
the state is split (:mod:`pprm.node.split`): the key service answers only the
front's identity, and the front accepts only the key service's answers. The
boxed payload is::

    u32 length of the JSON | canonical JSON {op, nonce, time, meta, blobs} | blob bytes ...

``blobs`` lists the byte lengths of the binary parts that follow (queries,
ciphertexts, templates), so nothing large is base64-encoded. A response
echoes the request's nonce, so an answer cannot be replayed onto another
request; the key service refuses a request nonce it has seen, a request
older than :data:`MAX_AGE`, or one made before it started (it keeps the
nonces in memory only).

On the socket each frame is preceded by its length (8 bytes, big-endian);
one request and its response per connection.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from pprm.crypto.identity import Identity, PublicIdentity
from pprm.errors import MessageError, NetworkError, ParameterError
from pprm.protocol import canonical

__all__ = ["Frame", "Payload", "seal_frame", "open_frame", "parse_address", "send_frame", "recv_frame",
           "connect", "MAX_AGE", "MAX_FRAME"]

MAGIC = b"PKL1"
REQUEST = 1
RESPONSE = 2
_SIG = 64
# Signature domains: a request's signature can never pass as a response's.
_DOMAIN = {REQUEST: b"pprm keylink request\x00", RESPONSE: b"pprm keylink response\x00"}
# A request older than this (or this far in the future) is refused. The key
# service handles one request at a time, and a blind database build (about a
# minute per 100k templates) may hold the ones queued behind it, so five
# minutes; the nonces of that window are kept, so a replay is refused anyway.
MAX_AGE = 300
# Largest frame either side reads: a masked answer for 30M templates at
# 8 bytes each is 240 MB; 1 GiB leaves room and bounds what a peer can make
# the other allocate.
MAX_FRAME = 1 << 30
# How long a side waits on a silent socket before giving up on it.
IO_TIMEOUT = 300.0


@dataclass(frozen=True)
class Payload:
    """What a frame carries.

    Attributes:
        op: the operation (``release``, ``resolve``, ...), or ``"ok"`` /
            ``"error"`` in a response.
        nonce: 32 hex digits; a response echoes its request's.
        time: sender's clock, seconds.
        meta: small JSON fields of the operation.
        blobs: the binary parts (query bytes, ciphertexts, templates).
    """

    op: str
    nonce: str
    time: int
    meta: dict[str, Any]
    blobs: tuple[bytes, ...] = field(default=(), repr=False)

    def to_bytes(self) -> bytes:
        head = canonical.encode({"op": self.op, "nonce": self.nonce, "time": self.time, "meta": self.meta,
                                 "blobs": [len(b) for b in self.blobs]})
        return b"".join([struct.pack(">I", len(head)), head, *self.blobs])

    @classmethod
    def from_bytes(cls, data: bytes) -> Payload:
        """Parse a payload.

        Raises:
            MessageError: malformed.
        """
        if len(data) < 4:
            raise MessageError("key-service payload is truncated")
        (n,) = struct.unpack(">I", data[:4])
        if n > len(data) - 4:
            raise MessageError("key-service payload is truncated")
        obj = canonical.decode(data[4:4 + n], "key-service payload")
        try:
            op, nonce, t, meta, sizes = obj["op"], obj["nonce"], obj["time"], obj["meta"], obj["blobs"]
        except KeyError:
            raise MessageError("key-service payload lacks a field") from None
        if (not isinstance(op, str) or not isinstance(nonce, str) or len(nonce) != 32
                or not isinstance(t, int) or isinstance(t, bool) or not isinstance(meta, dict)
                or not isinstance(sizes, list)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes)):
            raise MessageError("key-service payload has a field of the wrong type")
        blobs = []
        at = 4 + n
        for size in sizes:
            if at + size > len(data):
                raise MessageError("key-service payload is truncated")
            blobs.append(data[at:at + size])
            at += size
        if at != len(data):
            raise MessageError("key-service payload has trailing bytes")
        return cls(op, nonce, t, meta, tuple(blobs))


def new_nonce() -> str:
    """A fresh request nonce (128 bits from the OS CSPRNG)."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Frame:
    """A verified, opened frame."""

    kind: int
    payload: Payload


def seal_frame(kind: int, payload: Payload, me: Identity, peer: PublicIdentity) -> bytes:
    """Box ``payload`` to ``peer`` and sign the result.

    Args:
        kind: :data:`REQUEST` or :data:`RESPONSE`.
        payload: what to send.
        me: the sender's identity.
        peer: the receiver's pinned public identity.

    Returns:
        The frame bytes.
    """
    box = me.box_to(peer, payload.to_bytes())
    head = MAGIC + bytes([kind])
    return head + me.sign(_DOMAIN[kind] + head + box) + box


def open_frame(blob: bytes, kind: int, me: Identity, peer: PublicIdentity) -> Payload:
    """Check a frame's signature (first), then open its box and parse the payload.

    Args:
        blob: the frame bytes.
        kind: the kind expected.
        me: the receiver's identity.
        peer: the sender's pinned public identity.

    Returns:
        The payload.

    Raises:
        AuthenticationError: not signed by ``peer``, or the box does not open.
        MessageError: malformed, or of another kind.
    """
    if len(blob) < len(MAGIC) + 1 + _SIG or blob[:len(MAGIC)] != MAGIC:
        raise MessageError("not a key-service frame")
    if blob[len(MAGIC)] != kind:
        raise MessageError("key-service frame of the wrong kind")
    head = blob[:len(MAGIC) + 1]
    sig = blob[len(head):len(head) + _SIG]
    box = blob[len(head) + _SIG:]
    peer.verify(_DOMAIN[kind] + head + box, sig)
    return Payload.from_bytes(me.unbox_from(peer, box))


def check_fresh(payload: Payload, now: float) -> None:
    """Refuse a request whose clock is more than :data:`MAX_AGE` seconds off.

    Raises:
        MessageError: too old or from the future.
    """
    if abs(payload.time - now) > MAX_AGE:
        raise MessageError("key-service request is stale (or the clocks disagree by over five minutes)")


def parse_address(address: str) -> tuple[str, str | tuple[str, int]]:
    """A key-service address: a unix socket path, or ``127.0.0.1:PORT`` / ``[::1]:PORT``.

    Returns:
        ``("unix", path)`` or ``("tcp", (host, port))``.

    Raises:
        ParameterError: a TCP address that is not loopback, or no port.

    Warning:
        Only loopback TCP is accepted: the link is authenticated and
        encrypted, but the key service is meant to be reachable from its
        front alone; across hosts, tunnel it (e.g. over SSH) to a socket.
    """
    if "/" in address or not address.rpartition(":")[2].isdigit():
        return "unix", address
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ParameterError(f"key-service address {address!r}: only a unix socket or a loopback port is allowed")
    return "tcp", (host, int(port))


def connect(address: str, timeout: float = IO_TIMEOUT) -> socket.socket:
    """Open a connection to a key service.

    Raises:
        NetworkError: nothing listens there.
    """
    family, where = parse_address(address)
    sock = socket.socket(socket.AF_UNIX if family == "unix" else socket.AF_INET6 if ":" in str(where[0])
                         else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(where)
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot reach the key service at {address}: {exc.strerror or exc}") from None
    return sock


def send_frame(sock: socket.socket, frame: bytes) -> None:
    """Write one length-prefixed frame."""
    sock.sendall(struct.pack(">Q", len(frame)) + frame)


def recv_frame(sock: socket.socket) -> bytes:
    """Read one length-prefixed frame.

    Raises:
        NetworkError: the connection closed early or timed out.
        MessageError: the announced length is over :data:`MAX_FRAME`.
    """
    (n,) = struct.unpack(">Q", _recv_exact(sock, 8))
    if n > MAX_FRAME:
        raise MessageError(f"key-service frame of {n} bytes is over the {MAX_FRAME}-byte limit")
    return _recv_exact(sock, n)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    try:
        while got < n:
            k = sock.recv_into(view[got:], min(n - got, 1 << 22))
            if k == 0:
                raise NetworkError("the key-service connection closed in the middle of a frame")
            got += k
    except TimeoutError:
        raise NetworkError("the key-service connection timed out") from None
    except OSError as exc:
        raise NetworkError(f"the key-service connection failed: {exc.strerror or exc}") from None
    return bytes(buf)


def remove_stale_socket(path: str) -> None:
    """Remove a unix socket file left by a key service that is gone (not one that is listening).

    Raises:
        NetworkError: another key service is listening on ``path``.
    """
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise NetworkError(f"a key service is already listening on {path}")


def now() -> int:
    return int(time.time())
