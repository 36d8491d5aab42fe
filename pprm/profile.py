"""The two query profiles, as one type every layer can name.

``sealed``: the probe is boxed to the responder, which matches it against
its own encrypted gallery and releases capped tokens through its key
service. ``blind``: the requester encrypts the probe under its own key pair
and the responder answers with masked, flooded values it cannot read.

A profile arrives as untrusted text in two places: a state's configuration
(``state.json``) and a message header. :func:`parse_profile` turns either
into a :data:`Profile` or raises the error that place calls for.
"""

from __future__ import annotations

from typing import Literal, TypeGuard

from pprm.errors import MessageError, ParameterError

__all__ = ["Profile", "PROFILES", "DEFAULT_PROFILE", "is_profile", "parse_profile"]

Profile = Literal["sealed", "blind"]
# Order is part of the wire documentation (envelope.PROFILES), not a ranking.
PROFILES: tuple[Profile, ...] = ("sealed", "blind")
# What a peer without a configured profile is queried with.
DEFAULT_PROFILE: Profile = "sealed"


def is_profile(value: object) -> TypeGuard[Profile]:
    """Whether ``value`` is exactly one of :data:`PROFILES`.

    Args:
        value: anything, typically a decoded JSON value.

    Returns:
        True for ``"sealed"`` or ``"blind"`` (``str`` only: no subclasses,
        no surrounding spaces, no other case).
    """
    return type(value) is str and value in PROFILES


def parse_profile(value: object, *, on_wire: bool = False) -> Profile:
    """Turn untrusted text into a :data:`Profile`.

    Args:
        value: the text, as read from configuration or a message.
        on_wire: True when ``value`` came in a message: a bad value is then
            a malformed message, not a bad setting.

    Returns:
        The profile.

    Raises:
        ParameterError: ``value`` is not a profile (configuration).
        MessageError: ``value`` is not a profile (``on_wire=True``).
    """
    if is_profile(value):
        return value
    shown = repr(value) if isinstance(value, str) and len(value) <= 32 else type(value).__name__
    if on_wire:
        raise MessageError(f"unknown profile {shown}; expected 'sealed' or 'blind'")
    raise ParameterError(f"unknown profile {shown}; expected 'sealed' or 'blind'")
