"""Where peers are reached: direct addresses, or one router for all.

A peers file is JSON mapping state codes to base URLs::

    {"DE": "http://127.0.0.1:8101", "FR": "http://127.0.0.1:8102"}

The address says nothing about trust: who a peer is comes from its card in
the roster, and every message is signed. A wrong or hostile address yields
messages that fail verification, never accepted ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pprm.errors import ParameterError, UnknownPeerError
from pprm.net.wire import STATE_CODE

__all__ = ["Directory", "check_url", "load_peers"]

# A peers file is a short list of addresses; anything larger is a mistake.
MAX_PEERS_FILE = 1 << 20


def check_url(url: str) -> str:
    """A base URL without trailing slash, checked to be plain http(s).

    Raises:
        ParameterError: another scheme, credentials, a query or a fragment.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ParameterError(f"not an http(s) address: {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ParameterError(f"an address takes no credentials, query or fragment: {url!r}")
    return url.rstrip("/")


def load_peers(path: str) -> dict[str, str]:
    """Read a peers file.

    Raises:
        ParameterError: unreadable, not a JSON object of code -> URL, or a bad URL.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PEERS_FILE + 1)
    except OSError as exc:
        raise ParameterError(f"cannot read peers file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_PEERS_FILE:
        raise ParameterError(f"peers file {path} is larger than {MAX_PEERS_FILE} bytes")
    try:
        data = json.loads(raw)
    except ValueError:
        raise ParameterError(f"peers file {path} is not JSON") from None
    if not isinstance(data, dict) or not data:
        raise ParameterError(f"peers file {path} must be a JSON object of state code -> URL")
    peers = {}
    for code, url in data.items():
        if not isinstance(code, str) or not STATE_CODE.fullmatch(code) or not isinstance(url, str):
            raise ParameterError(f"peers file {path}: bad entry {code!r}")
        peers[code] = check_url(url)
    return peers


@dataclass(frozen=True)
class Directory:
    """How to reach each peer.

    Attributes:
        peers: state code -> base URL of its service.
        router: base URL of a router, used for every peer not in ``peers``.
    """

    peers: Mapping[str, str] = field(default_factory=dict)
    router: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", {c: check_url(u) for c, u in self.peers.items()})
        if self.router is not None:
            object.__setattr__(self, "router", check_url(self.router))

    def base(self, code: str) -> str:
        """The base URL that serves ``/v1/...`` for state ``code``.

        Raises:
            UnknownPeerError: no address for this state and no router.
        """
        if code in self.peers:
            return self.peers[code]
        if self.router is not None and STATE_CODE.fullmatch(code):
            return f"{self.router}/route/{code}"
        raise UnknownPeerError(f"no address for state {code} (add it to the peers file, or use a router)")
