"""pprm: privacy-preserving face matching between states.

Layers, each importing only those before it::

    pprm.crypto -> pprm.matching -> pprm.protocol -> pprm.node -> pprm.net -> pprm.cli

``pprm.cluster`` (shards on a Dask cluster) sits on ``pprm.matching``; the
node accepts its matchers, and ``pprm.net`` and ``pprm.cli`` may connect it.

``pprm.synthetic`` and ``pprm.face`` (photos to templates; the optional
``face`` extra, never imported from here) stand apart.

The safe, high-level entry points are re-exported here::

    from pprm import State, KeyService, Requester, Responder
"""

from __future__ import annotations

from pprm.errors import (
    AuthenticationError,
    BackendError,
    CiphertextError,
    ExpiredError,
    GalleryError,
    MessageError,
    ParameterError,
    PolicyError,
    PprmError,
    RecipientError,
    ReplayError,
    StateError,
    TemplateError,
    TokenError,
    UnknownPeerError,
)
from pprm.matching.kernel import BACKEND
from pprm.node.keyservice import KeyService
from pprm.node.requester import OpenedAnswer, Requester
from pprm.node.responder import Responder
from pprm.node.state import State

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BACKEND",
    "State",
    "KeyService",
    "Requester",
    "Responder",
    "OpenedAnswer",
    "PprmError",
    "ParameterError",
    "TemplateError",
    "CiphertextError",
    "BackendError",
    "StateError",
    "GalleryError",
    "UnknownPeerError",
    "MessageError",
    "AuthenticationError",
    "RecipientError",
    "ReplayError",
    "ExpiredError",
    "TokenError",
    "PolicyError",
]
