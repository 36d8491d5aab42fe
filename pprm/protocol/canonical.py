"""Canonical JSON: the one encoding of headers, bodies and cards.

Sorted keys, no insignificant white space, ASCII only. A decoder accepts
only bytes that re-encode to themselves, so every value has exactly one
encoding and signatures cover meaning, not formatting.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pprm.errors import MessageError

__all__ = ["encode", "decode", "b64", "unb64"]


def encode(obj: Any) -> bytes:
    """Canonical bytes of a JSON-ready object."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def decode(blob: bytes, what: str) -> dict[str, Any]:
    """Parse canonical JSON into a dict.

    Raises:
        MessageError: not JSON, not an object, or not in canonical form.
    """
    try:
        obj = json.loads(blob.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MessageError(f"{what} is not valid canonical JSON") from None
    if not isinstance(obj, dict):
        raise MessageError(f"{what} is not a JSON object")
    try:
        again = encode(obj)
    except ValueError:
        # NaN/Infinity parse but cannot be re-encoded (allow_nan=False).
        raise MessageError(f"{what} is not in canonical form") from None
    if again != blob:
        raise MessageError(f"{what} is not in canonical form")
    return obj


def b64(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str, what: str) -> bytes:
    """Inverse of :func:`b64`, strict.

    Raises:
        MessageError: not a canonical URL-safe base64 string.
    """
    if not isinstance(text, str):
        raise MessageError(f"{what} must be a base64 string")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MessageError(f"{what} is not valid base64") from None
    if b64(raw) != text:
        raise MessageError(f"{what} is not canonical base64")
    return raw
