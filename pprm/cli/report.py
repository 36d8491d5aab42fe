"""The JSON vocabulary of ``pprm ... --json`` (documented in docs/JSON.md).

Every ``--json`` output is one JSON object on stdout that opens with

* ``"format"``: ``"pprm.<verb>/1"``, or ``"pprm.<verb>.<action>/1"`` for the
  verbs with actions (``pprm.audit.verify/1``); :data:`FORMATS` lists them all;
* ``"ok"``: true exactly when the command exits 0;
* ``"error"``: ``{"code", "message"}``, present exactly when ``ok`` is false.

A failure with nothing more to report prints :data:`ERROR` (``pprm.error/1``):
``{"format", "ok": false, "error": {"code", "message"}}``. The codes come from
:data:`ERROR_CODES`, one table, most specific class first; the classes the
HTTP services also answer with carry the same codes as there
(:func:`pprm.net.wire.status_of`).

The fields are named alike in every verb: the state the command runs in is
``"state"``, the other state ``"peer"`` (the verb says the direction: a
query goes to its peer, an answer comes from it), the protection profile
``"profile"``, files written ``"out"``.

Only the standard library and :mod:`pprm.errors` are imported here (the
network stack is not loaded to print an error).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from pprm.errors import (
    AlignmentError,
    AuthenticationError,
    BackendError,
    CiphertextError,
    ClusterError,
    ExpiredError,
    FollowUpRefusedError,
    GalleryError,
    ImageError,
    IntakeLimitError,
    KeyRotationError,
    KeyServiceUnavailableError,
    MessageError,
    MissingExtraError,
    ModelPackError,
    NetworkError,
    NetworkTimeoutError,
    NoFaceError,
    NotAHitError,
    ParameterError,
    PolicyError,
    PolicyTamperedError,
    PprmError,
    ProbeNotKeptError,
    RecipientError,
    RefusedError,
    RemoteError,
    ReplayError,
    StateError,
    TemplateError,
    TokenError,
    UnknownPeerError,
)

__all__ = [
    "VERSION",
    "format_tag",
    "ERROR",
    "QUERY_BATCH",
    "ANSWER_BATCH",
    "FORMATS",
    "ERROR_CODES",
    "FALLBACK_CODE",
    "USAGE",
    "INTERRUPTED",
    "PARTIAL",
    "MISMATCH",
    "OS_CODE",
    "error_code",
    "error_detail",
    "one_line",
    "message_of",
    "envelope",
    "error_object",
    "error_envelope",
    "error_line",
]

# The version every tag ends in; a tag changes only when a field changes meaning or disappears.
VERSION = 1


def format_tag(*path: str) -> str:
    """The format tag of one output.

    Args:
        path: the verb and, for verbs with actions, the action
            (``"audit", "verify"``).

    Returns:
        ``pprm.audit.verify/1``.
    """
    return f"pprm.{'.'.join(path)}/{VERSION}"


ERROR = format_tag("error")
QUERY_BATCH = format_tag("query", "batch")
ANSWER_BATCH = format_tag("answer", "batch")

# Every tag a pprm verb prints (docs/JSON.md documents each one; a test checks both ways).
FORMATS: tuple[str, ...] = tuple(format_tag(*p.split(".")) for p in (
    "init", "trust", "enroll", "embed", "remove", "prepare", "query", "query.batch", "answer", "answer.batch",
    "open",
    "follow-up", "resolve", "keys.list", "keys.abandon", "info", "policy.show", "policy.set", "audit.verify",
    "audit.show", "bench", "demo", "ask", "keyservice.split", "keyservice.join", "error"))

# Codes of failures that are not exceptions of pprm.errors.
USAGE = "usage"
INTERRUPTED = "interrupted"
PARTIAL = "partial"
MISMATCH = "mismatch"
OS_CODE = "os"
# What a PprmError subclass missing from the table gets; a test keeps every class of pprm.errors off it.
FALLBACK_CODE = "error"

# Most specific first: the first class an exception is an instance of wins. The first block are
# the HTTP wire codes (pprm.net.wire._CODES), in its order, with NotAHitError put before TokenError.
ERROR_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (KeyServiceUnavailableError, "unavailable"),
    (IntakeLimitError, "limit"),
    (ReplayError, "replay"),
    (ExpiredError, "expired"),
    (RecipientError, "recipient"),
    (KeyRotationError, "key"),
    (AuthenticationError, "authentication"),
    (UnknownPeerError, "unknown-peer"),
    (ParameterError, "parameters"),
    (NotAHitError, "not-a-hit"),
    (TokenError, "token"),
    (TemplateError, "template"),
    (MessageError, "message"),
    # pprm's own, by family.
    (FollowUpRefusedError, "followup-refused"),
    (RefusedError, "refused"),
    (PolicyError, "policy"),
    (PolicyTamperedError, "policy-tampered"),
    (ProbeNotKeptError, "probe-not-kept"),
    (StateError, "state"),
    (GalleryError, "gallery"),
    (CiphertextError, "ciphertext"),
    (BackendError, "backend"),
    (NetworkTimeoutError, "timeout"),
    (NetworkError, "network"),
    (RemoteError, "remote"),
    (ClusterError, "cluster"),
    (MissingExtraError, "missing-extra"),
    (ModelPackError, "model-pack"),
    (ImageError, "image"),
    (AlignmentError, "alignment"),
    (NoFaceError, "no-face"),
    (PprmError, FALLBACK_CODE),
    (OSError, OS_CODE),
    (KeyboardInterrupt, INTERRUPTED),
)


def error_code(exc: BaseException) -> str:
    """The error code of an exception.

    Args:
        exc: what a verb raised.

    Returns:
        The code of the first class in :data:`ERROR_CODES` that ``exc`` is
        an instance of; ``internal`` for anything else.
    """
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return "internal"


def error_detail(exc: BaseException) -> dict[str, Any] | None:
    """The structured attributes some errors carry, for ``error.detail``.

    Args:
        exc: what a verb raised.

    Returns:
        The refusing peer, query and reason of a refusal, the HTTP status and
        code a peer answered with, ...; None when the exception carries none.
    """
    if isinstance(exc, RefusedError):
        detail: dict[str, Any] = {"peer": exc.peer, "query_id": exc.query_id, "reason": exc.reason}
        if isinstance(exc, FollowUpRefusedError):
            detail["followup_id"] = exc.followup_id
        return detail
    if isinstance(exc, NotAHitError):
        return {"peer": exc.peer, "query_id": exc.query_id, "followup_id": exc.followup_id}
    if isinstance(exc, RemoteError):
        return {"status": exc.status, "code": exc.code}
    if isinstance(exc, IntakeLimitError):
        return {"peer": exc.peer, "reason": exc.reason, "retry_after": exc.retry_after}
    if isinstance(exc, PolicyTamperedError) and exc.fields:
        return {"fields": list(exc.fields)}
    return None


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines too) made one space.

    Args:
        message: any text.

    Returns:
        One line.
    """
    return " ".join(message.split())


def message_of(exc: BaseException) -> str:
    """The one-line message of an error, as ``pprm: error:`` prints it.

    Args:
        exc: a PprmError, an OSError, ...

    Returns:
        The message; an OSError names its file; an exception without text
        gives its class name.
    """
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        text = f"{exc.filename}: {what}" if exc.filename else what
    else:
        text = str(exc)
    return one_line(text) or type(exc).__name__


def envelope(tag: str, body: Mapping[str, Any], *, ok: bool = True,
             error: BaseException | tuple[str, str] | None = None) -> dict[str, Any]:
    """One ``--json`` output: the format tag, ``ok``, the error if any, then the verb's fields.

    Args:
        tag: one of :data:`FORMATS`.
        body: the verb's fields.
        ok: whether the command exits 0.
        error: why it does not (an exception, or ``(code, message)``);
            required exactly when ``ok`` is false.

    Returns:
        The object to print.

    Raises:
        ValueError: ``error`` given with ``ok``, missing without it, or
            ``body`` names ``ok``, ``error``, or a ``format`` other than ``tag``.
    """
    if ok == (error is not None):
        raise ValueError("an output carries an error exactly when it is not ok")
    if body.get("format") == tag:  # a document that carries its own tag (pprm.bench/1)
        body = {k: v for k, v in body.items() if k != "format"}
    clash = {"format", "ok", "error"} & set(body)
    if clash:
        raise ValueError(f"a verb's fields may not be named {sorted(clash)[0]!r}")
    out: dict[str, Any] = {"format": tag, "ok": ok}
    if isinstance(error, BaseException):
        out["error"] = error_object(error)
    elif error is not None:
        out["error"] = {"code": error[0], "message": one_line(error[1])}
    out.update(body)
    return out


def error_object(exc: BaseException) -> dict[str, Any]:
    """``{"code", "message"}`` (and ``"detail"`` where the error carries one) for an exception.

    Args:
        exc: what a verb raised.

    Returns:
        The value of an output's ``"error"`` field.
    """
    out: dict[str, Any] = {"code": error_code(exc), "message": message_of(exc)}
    detail = error_detail(exc)
    if detail is not None:
        out["detail"] = detail
    return out


def error_envelope(error: BaseException | tuple[str, str]) -> dict[str, Any]:
    """The :data:`ERROR` output of a failure with nothing more to report.

    Args:
        error: the exception, or ``(code, message)``.

    Returns:
        ``{"format": "pprm.error/1", "ok": false, "error": {...}}``.
    """
    return envelope(ERROR, {}, ok=False, error=error)


def error_line(error: BaseException | str) -> None:
    """Print the one ``pprm: error:`` line on stderr.

    Args:
        error: the exception, or its message.
    """
    message = error if isinstance(error, str) else message_of(error)
    print(f"pprm: error: {message}", file=sys.stderr)
