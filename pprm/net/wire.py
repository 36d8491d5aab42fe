"""The HTTP contract between states, routers and requesters.

The messages themselves are unchanged from the file-based flow: signed (and,
where they carry personal metadata, boxed) envelopes from
:mod:`pprm.protocol`. HTTP only carries them; nothing in this module can
read or alter a message without the signature check at the far end failing.

Routes of a state's service (all under ``/v1``)::

    GET  /v1/card               the state's signed public card
    GET  /v1/health             {"state": NAME, "ok": true, "pending": N}
    POST /v1/queries            a delivery (below); 202 {"query_id": ID}
    GET  /v1/answers/{SENDER}/{ID}?wait=S
                                200 the answer or refusal; 202 while pending
    POST /v1/followups          a follow-up message; 200 {"status": "resolved", "query_id", "followup_id"},
                                or 200 the signed refusal (octets) of a blind follow-up that is not a hit

A router exposes each state's routes under ``/route/{STATE}/v1/...``.

A *delivery* is one query plus the key announcements that must be accepted
in the same step (blind profile), framed like the blind bodies
(:mod:`pprm.protocol.delivery`, re-exported here; a query file that carries
an announcement holds the same bytes)::

    json length u32 BE | {"kind": "delivery", "parts": n} | (length u32 BE | message)*

Errors are JSON: ``{"error": {"code": CODE, "message": ONE_LINE}}``.
"""

from __future__ import annotations

import re
from typing import Any

from pprm.errors import (
    AuthenticationError,
    ExpiredError,
    IntakeLimitError,
    KeyRotationError,
    KeyServiceUnavailableError,
    MessageError,
    ParameterError,
    PprmError,
    RecipientError,
    ReplayError,
    TemplateError,
    TokenError,
    UnknownPeerError,
)

# The framing lives with the protocol, so that the file flow (pprm query /
# answer) writes and reads the same bytes without loading the HTTP stack.
from pprm.protocol.delivery import MAX_ANNOUNCEMENTS, pack_delivery, unpack_delivery

__all__ = [
    "API",
    "MAX_DELIVERY",
    "MAX_FOLLOWUP",
    "MAX_ANSWER",
    "MAX_WAIT",
    "MAX_ANNOUNCEMENTS",
    "OCTETS",
    "STATE_CODE",
    "QUERY_ID",
    "pack_delivery",
    "unpack_delivery",
    "error_body",
    "error_of",
    "status_of",
]

API = "/v1"
OCTETS = "application/octet-stream"
# A blind delivery is the largest request: a 394 kB probe plus a 3.67 MB key
# announcement for pprm-blind-n16384-v2 (docs/PERFORMANCE.md, blind profile); 16 MiB leaves
# room for a second announcement and larger future sets, and bounds memory.
MAX_DELIVERY = 16 << 20
# Follow-ups carry one token in a boxed body, a blind one also the probe as
# float32 in base64: 3.2 kB signed and boxed at d = 512, 22 kB at the largest
# dimension the body parser accepts (4096); 64 KiB is slack.
MAX_FOLLOWUP = 64 << 10
# Answers a requester will download: a blind answer for 3*10**7 templates is
# 3663 blocks of 196 kB (24 B per slot), about 720 MB. 1 GiB bounds it.
MAX_ANSWER = 1 << 30
# Long-poll cap in seconds: shorter than common proxy idle timeouts (60 s).
MAX_WAIT = 30.0
# State names as pprm.protocol.card accepts them; query ids as envelope.new_id() makes them.
STATE_CODE = re.compile(r"[A-Z][A-Z0-9-]{1,15}")
QUERY_ID = re.compile(r"[0-9a-f]{32}")


# Most specific first: the first class an exception is an instance of wins.
_CODES: tuple[tuple[type[PprmError], str, int], ...] = (
    (KeyServiceUnavailableError, "unavailable", 503),
    (IntakeLimitError, "limit", 429),
    (ReplayError, "replay", 409),
    (ExpiredError, "expired", 410),
    (RecipientError, "recipient", 421),
    (KeyRotationError, "key", 409),
    (AuthenticationError, "authentication", 401),
    (UnknownPeerError, "unknown-peer", 403),
    (ParameterError, "parameters", 400),
    (TokenError, "token", 403),
    (TemplateError, "template", 400),
    (MessageError, "message", 400),
)


def status_of(exc: PprmError) -> tuple[int, str]:
    """The HTTP status and error code for an exception raised on a request.

    Errors that say nothing about the request (a broken state directory,
    a failed backend) are a 500 ``internal``; their text stays in the
    service's own log.
    """
    for cls, code, status in _CODES:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal"


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON error object; ``message`` is one line."""
    return {"error": {"code": code, "message": " ".join(message.split())[:500]}}


def error_of(payload: object) -> tuple[str, str] | None:
    """``(code, message)`` from a JSON error object, or None if it is not one."""
    if not isinstance(payload, dict):
        return None
    err = payload.get("error")
    if not isinstance(err, dict):
        return None
    code, message = err.get("code"), err.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return code, message
