"""A delivery: one query and the key announcements that travel with it, as one byte string.

Framed like the blind bodies (:func:`pprm.protocol.blind_messages.pack_parts`)::

    json length u32 BE | {"kind": "delivery", "parts": n} | (length u32 BE | message)*

The first part is the signed query, the others signed key announcements
(blind profile). The same bytes are the body of ``POST /v1/queries``
(:mod:`pprm.net.wire` re-exports these functions) and the content of a query
file that ``pprm query`` writes when a key announcement travels with the
query, so a query file can be posted unchanged and a delivery saved to disk
can be answered with ``pprm answer``.

The framing adds no trust and needs no signature of its own: each part is a
signed envelope that the responder verifies before it parses any body, and
the responder accepts an announcement only from the state that signed the
query naming its key. A bare signed message is told apart by its first four
bytes, the envelope's ``PPRM`` (:func:`split_query_file`): a delivery starts
with the length of its small JSON head, never that large.
"""

from __future__ import annotations

from pprm.errors import MessageError
from pprm.protocol.blind_messages import pack_parts, unpack_parts
from pprm.protocol.envelope import MAGIC

__all__ = ["MAX_ANNOUNCEMENTS", "pack_delivery", "unpack_delivery", "split_query_file"]

# Deliveries carry one query and at most one announcement today; 4 leaves room.
MAX_ANNOUNCEMENTS = 4

_KIND = "delivery"


def pack_delivery(query: bytes, announcements: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    """Frame one query and the key announcements that travel with it.

    Args:
        query: the signed query message.
        announcements: signed key announcements (blind profile), possibly none.

    Returns:
        The delivery: the request body for ``POST /v1/queries``, or a query file.

    Raises:
        MessageError: too many announcements.
    """
    if len(announcements) > MAX_ANNOUNCEMENTS:
        raise MessageError(f"a delivery carries at most {MAX_ANNOUNCEMENTS} key announcements")
    return pack_parts({"kind": _KIND}, [query, *announcements])


def unpack_delivery(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Strict inverse of :func:`pack_delivery`.

    The parts are not verified here: the responder verifies every signature
    before it parses any body.

    Returns:
        ``(query, announcements)``.

    Raises:
        MessageError: malformed framing, no query, or too many parts.
    """
    meta, parts = unpack_parts(blob, "delivery")
    if meta != {"kind": _KIND}:
        raise MessageError("delivery has unexpected fields")
    if not parts or len(parts) > 1 + MAX_ANNOUNCEMENTS:
        raise MessageError(f"a delivery holds one query and at most {MAX_ANNOUNCEMENTS} key announcements")
    return parts[0], parts[1:]


def split_query_file(blob: bytes) -> tuple[bytes, list[bytes]]:
    """The query and the key announcements in a query file: a bare signed message, or a delivery.

    Args:
        blob: the file's bytes.

    Returns:
        ``(query, announcements)``; no announcements for a bare message.
        Nothing is verified here.

    Raises:
        MessageError: neither a signed message nor a well-formed delivery.
    """
    if blob[:len(MAGIC)] == MAGIC:
        return blob, []
    try:
        return unpack_delivery(blob)
    except MessageError as exc:
        raise MessageError(f"not a pprm query: neither a signed message nor a delivery ({exc})") from None
