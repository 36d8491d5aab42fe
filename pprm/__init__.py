"""pprm: privacy-preserving face matching between states.

Layers, each importing only those before it::

    pprm.crypto -> pprm.matching -> pprm.cluster -> pprm.protocol -> pprm.node -> pprm.net -> pprm.bench -> pprm.cli

``pprm.cluster`` (shards on a Dask cluster) sits on ``pprm.matching``; the
node accepts its matchers, and ``pprm.net`` and ``pprm.cli`` may connect it.
``pprm.bench`` is the benchmark harness behind ``pprm bench``.

``pprm.synthetic`` and ``pprm.face`` (photos to templates; the optional
``face`` extra, never imported from here) stand apart.

The safe, high-level entry points are re-exported here::

    from pprm import State, KeyService, Requester, Responder

:func:`backend` (and :data:`BACKEND`, read lazily) names the
multiply-accumulate kernel in use, ``native`` or ``numpy``; it is chosen and
self-checked the first time it is needed, so importing pprm does no
homomorphic-encryption work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pprm.errors import (
    AuthenticationError,
    BackendError,
    BackendWarning,
    CiphertextError,
    ExpiredError,
    GalleryError,
    MessageError,
    ParameterError,
    PolicyError,
    PprmError,
    PprmWarning,
    RecipientError,
    ReplayError,
    StateError,
    TemplateError,
    TokenError,
    UnknownPeerError,
)
from pprm.matching.kernel import backend
from pprm.node.keyservice import KeyService
from pprm.node.requester import OpenedAnswer, Requester
from pprm.node.responder import Responder
from pprm.node.state import State

__version__ = "0.1.0"

# Resolved on first access by __getattr__ below: reading it runs the kernel self-check.
BACKEND: str

__all__ = [
    "__version__",
    "BACKEND",
    "backend",
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
    "PprmWarning",
    "BackendWarning",
]


if not TYPE_CHECKING:

    def __getattr__(name: str) -> str:
        """Resolve :data:`BACKEND` lazily, by calling :func:`backend`.

        Args:
            name: the attribute asked for.

        Returns:
            The active kernel backend, for ``BACKEND``.

        Raises:
            AttributeError: any other missing name.
            BackendError: as :func:`pprm.matching.kernel.backend`.
        """
        if name == "BACKEND":
            return backend()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
