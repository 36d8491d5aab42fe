"""States as network services: an HTTP service per state, a client, a router.

Layering: ``pprm.net`` sits on :mod:`pprm.node` and below :mod:`pprm.cli`.
It carries the signed messages of :mod:`pprm.protocol` unchanged; HTTP adds
transport, limits and timeouts, never trust.

- :mod:`pprm.net.wire`: routes, limits, the delivery framing, JSON errors.
- :mod:`pprm.net.service`: one state's Starlette app (``pprm serve``).
- :mod:`pprm.net.router`: the key-less relay (``pprm route``).
- :mod:`pprm.net.client`, :mod:`pprm.net.ask`: asking peers (``pprm ask``).
"""

from __future__ import annotations

from pprm.net.ask import STATUSES, PeerOutcome, ask, ask_async, send_follow_up
from pprm.net.directory import Directory, load_peers
from pprm.net.router import create_router_app
from pprm.net.service import create_app

__all__ = ["STATUSES", "PeerOutcome", "ask", "ask_async", "send_follow_up", "Directory", "load_peers",
           "create_app", "create_router_app"]
