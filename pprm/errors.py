"""One exception root for everything pprm raises on purpose.

Callers catch :class:`PprmError`; where a caller would naturally expect a
builtin (``ValueError`` for bad arguments, ``LookupError`` for unknown names)
the subclass derives from that builtin too, as pyca/cryptography does.

Messages are one line and never contain key material, templates or scores.
Warnings pprm gives derive from :class:`PprmWarning`, and print as one line.
"""

from __future__ import annotations

__all__ = [
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
    "RefusedError",
    "KeyRotationError",
    "NetworkError",
    "NetworkTimeoutError",
    "RemoteError",
    "ClusterError",
    "MissingExtraError",
    "ModelPackError",
    "ImageError",
    "AlignmentError",
    "NoFaceError",
    "NotAHitError",
    "FollowUpRefusedError",
    "ProbeNotKeptError",
    "IntakeLimitError",
    "KeyServiceUnavailableError",
    "PolicyTamperedError",
    "PprmWarning",
    "BackendWarning",
]


class PprmError(Exception):
    """Root of every error pprm raises deliberately."""


class ParameterError(PprmError, ValueError):
    """A parameter set or numeric setting is unknown, invalid or not allowed."""


class TemplateError(PprmError, ValueError):
    """Templates or references are malformed: wrong dimension, NaN, zero vector, duplicates."""


class CiphertextError(PprmError, ValueError):
    """HE bytes do not parse, or do not match the expected parameters, scale or level."""


class BackendError(PprmError, RuntimeError):
    """The requested compute backend is unavailable or failed its self-check."""


class StateError(PprmError):
    """A state directory is missing, incomplete, corrupt or already exists."""


class GalleryError(PprmError, LookupError):
    """A gallery operation names an unknown reference or finds inconsistent storage."""


class UnknownPeerError(PprmError, LookupError):
    """A message or command names a state that is not in the roster."""


class MessageError(PprmError, ValueError):
    """A message is malformed: truncated, oversized, trailing bytes, bad fields."""


class AuthenticationError(MessageError):
    """A signature, box or token failed verification."""


class RecipientError(MessageError):
    """A message is addressed to another state."""


class ReplayError(MessageError):
    """A single-use message was seen before."""


class ExpiredError(MessageError):
    """A message is past its expiry time (or not yet valid)."""


class KeyRotationError(MessageError):
    """A blind-profile key id was announced twice, or a retired or unknown key was used."""


class TokenError(PprmError, ValueError):
    """A candidate token is unknown, forged, expired, or presented by the wrong state."""


class PolicyError(PprmError):
    """The request is well-formed but refused by this state's policy."""


class RefusedError(PolicyError):
    """A peer answered one of this state's queries with a signed refusal.

    Attributes:
        peer: the refusing state.
        query_id: the refused query.
        reason: the refusal's reason code (``purpose``, ``quota-case`` or
            ``quota-peer``).
    """

    def __init__(self, message: str, *, peer: str, query_id: str, reason: str) -> None:
        super().__init__(message)
        self.peer = peer
        self.query_id = query_id
        self.reason = reason


class NetworkError(PprmError, ConnectionError):
    """A peer or router could not be reached, or broke the HTTP contract."""


class NetworkTimeoutError(NetworkError, TimeoutError):
    """A peer or router did not answer in time."""


class RemoteError(PprmError):
    """A peer or router answered an HTTP request with a structured error.

    Attributes:
        status: the HTTP status code.
        code: the error code from the JSON body (``replay``, ``authentication``, ...).
    """

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class MissingExtraError(PprmError, ImportError):
    """An optional dependency group is not installed (e.g. ``pip install "pprm[face]"``)."""


class ModelPackError(PprmError):
    """A face model pack is missing, incomplete, unloadable or has the wrong interface.

    Deliberately not a ``FileNotFoundError``: most of its cases (a corrupt
    ``.onnx`` file, a recognizer with the wrong input size, two recognizers in
    one folder) are not about a missing file, like :class:`StateError`.
    """


class ImageError(PprmError, ValueError):
    """An image cannot be read or decoded, or an image array is not HxWx3 uint8 BGR."""


class AlignmentError(PprmError, ValueError):
    """Facial landmarks are degenerate (collinear, coincident or non-finite): no similarity fits them."""


class NoFaceError(PprmError, LookupError):
    """No usable face was found in an image."""


class ClusterError(PprmError, RuntimeError):
    """A sharded query or gallery sync could not complete on the cluster (nothing was answered)."""


class NotAHitError(TokenError):
    """A blind follow-up's probe does not clear the threshold against the record behind its handle.

    The responder refused the follow-up with a signed refusal (reason
    ``not-a-hit``), logged it, counted it against the answer's follow-up
    limit *k* and marked its id used; nothing was resolved. The message
    names no score, and neither does anything else here.

    Attributes:
        peer: the requesting state.
        query_id: the query whose answer named the handle.
        followup_id: the refused follow-up's id.
        refusal: the signed refusal, boxed to the requester, to hand over
            (empty from a split state's key service, whose front signs it).
        refusal_id: the refusal's message id.
    """

    def __init__(self, message: str, *, peer: str, query_id: str, followup_id: str, refusal: bytes,
                 refusal_id: str = "") -> None:
        super().__init__(message)
        self.peer = peer
        self.query_id = query_id
        self.followup_id = followup_id
        self.refusal = refusal
        self.refusal_id = refusal_id


class FollowUpRefusedError(RefusedError):
    """A peer answered one of this state's follow-ups with a signed refusal.

    Attributes:
        followup_id: the refused follow-up (``peer``, ``query_id`` and
            ``reason``, e.g. ``not-a-hit``, as in :class:`RefusedError`).
    """

    def __init__(self, message: str, *, peer: str, query_id: str, reason: str, followup_id: str) -> None:
        super().__init__(message, peer=peer, query_id=query_id, reason=reason)
        self.followup_id = followup_id


class ProbeNotKeptError(StateError):
    """A blind follow-up needs its query's probe, and this state's outbox does not hold it.

    Queries recorded before pprm kept probes for follow-ups, and queries whose
    probe was dropped because no follow-up can follow (no hit, refused,
    abandoned), have none: query again to follow up.
    """


class IntakeLimitError(PolicyError):
    """A network service refused a delivery at intake: its sender is at a limit there.

    Nothing was stored or recorded (no inbox entry, no replay-cache entry, no
    quota use, no audit entry), so the same delivery may be sent again once
    the limit clears.

    Attributes:
        peer: the sending state.
        reason: ``inbox-share`` (the sender holds its share of the inbox) or
            ``quota-peer`` (its answered plus queued queries reach its quota).
        retry_after: seconds after which a retry may succeed (a hint).
    """

    def __init__(self, message: str, *, peer: str, reason: str, retry_after: int) -> None:
        super().__init__(message)
        self.peer = peer
        self.reason = reason
        self.retry_after = retry_after


class PolicyTamperedError(StateError):
    """``state.json`` holds a policy other than the last one the audit log records.

    Policy changes go through ``pprm policy set`` (:func:`pprm.node.policy.set_policy`),
    which records them under the signed audit head; any other change (a hand
    edit, or a ``policy set`` cut short between its audit entry and its write)
    is refused where the state starts answering, and by ``pprm audit verify``.

    Attributes:
        fields: the policy settings that differ, in policy order; empty when
            the recorded policy could not be read back to compare them.
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class KeyServiceUnavailableError(NetworkError):
    """A split state's key service could not be reached, or hung up mid-request.

    Nothing was decided for the request that failed; a network service keeps
    the delivery and answers it once the key service is back.
    """


class PprmWarning(Warning):
    """Root of every warning pprm gives: filter them all with ``warnings.simplefilter("ignore", PprmWarning)``."""


class BackendWarning(PprmWarning, RuntimeWarning):
    """The native kernel is not built, or failed its self-check: pprm falls back to the numpy kernel.

    Results stay exact, only slower. Set ``PPRM_REQUIRE_NATIVE=1`` to make
    the fallback a :class:`BackendError` instead, or ``PPRM_BACKEND=numpy``
    to choose numpy without a warning when the native kernel is not built.
    """
