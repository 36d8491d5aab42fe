"""What a responder needs of a matcher, whichever process or machine runs it.

A matcher holds public material only (the sealed gallery, or the blind
database and the requester's public keys) and never decrypts. The same
interfaces are met by the matchers that run in this process
(:class:`~pprm.matching.sealed.SealedMatcher`,
:class:`~pprm.matching.blind.BlindMatcher`) and by the sharded ones that
fan a query out over a cluster (:mod:`pprm.cluster`), so the node calls
one method per profile and never asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from pprm.matching.blind import BlindAnswer, BlindRequest
from pprm.matching.sealed import MaskedResult

__all__ = ["BlindMatching", "Progress", "SealedMatching"]

Progress = Callable[[int, int], None]


class SealedMatching(Protocol):
    """A sealed-profile matcher over one gallery view."""

    def match(self, probe: np.ndarray, threshold: float, progress: Progress | None = None) -> MaskedResult:
        """Masked encrypted threshold results for ``probe`` against every block.

        Args:
            probe: one template of the gallery's dimension (normalised by the matcher).
            threshold: tau in (0, 1).
            progress: called with ``(blocks done, total)``.

        Returns:
            The masked result, in the gallery view's block order.

        Raises:
            TemplateError: the probe is malformed.
            ParameterError: the threshold is outside (0, 1).
            ClusterError: a sharded matcher lost blocks (nothing is answered).
        """
        ...


class BlindMatching(Protocol):
    """A blind-profile matcher over one blind database."""

    def answer_blind(self, request: BlindRequest, tau: float, progress: Progress | None = None) -> BlindAnswer:
        """Masked, flooded answer blocks for one blind query, in a fresh secret block order.

        Args:
            request: the parsed probe and the requester's announced keys.
            tau: the threshold.
            progress: called with ``(blocks done, total)``.

        Returns:
            The answer; its ``order`` stays with the responder.

        Raises:
            ParameterError: tau out of range.
            CiphertextError, KeyRotationError: the requester's keys do not load
                or do not match their key id.
            ClusterError: a sharded matcher lost blocks (nothing is answered).
        """
        ...
