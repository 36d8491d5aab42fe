"""A registry of validated parameter sets, shared by both profiles' modules.

Both :mod:`pprm.crypto.params` (sealed) and :mod:`pprm.crypto.blind_params`
turn literals into frozen dataclasses; this module holds what they share:
canonical JSON and its digest, and lookup by name or digest with the
``INSECURE*`` permission check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any, Generic, Protocol, TypeVar

from pprm.errors import ParameterError

__all__ = ["Registry", "canonical_fields", "digest_of", "check_ring", "HE_MAX_LOG_Q"]

# Maximum total bit length of the coefficient modulus for 128-bit classical
# security with a ternary secret, per the 2024 HomomorphicEncryption.org
# security guidelines (stricter than SEAL's 2018 table; docs/DESIGN.md section 5).
HE_MAX_LOG_Q: dict[int, int] = {4096: 107, 8192: 214, 16384: 431, 32768: 868}


def check_ring(name: str, n: int, log_q: int, insecure: bool) -> None:
    """The checks every parameter set shares: N, the ``INSECURE*`` naming, the 2024 security bound.

    Raises:
        ParameterError: N not a power of two >= 1024, an insecure set not
            named ``INSECURE*`` (or the reverse), or log Q above the bound.
    """
    if n < 1024 or n & (n - 1):
        raise ParameterError(f"{name}: poly_modulus_degree must be a power of two >= 1024")
    if insecure != name.startswith("INSECURE"):
        raise ParameterError(f"{name}: only sets named INSECURE* may be insecure, and all must")
    if not insecure:
        limit = HE_MAX_LOG_Q.get(n)
        if limit is None or log_q > limit:
            raise ParameterError(f"{name}: log Q = {log_q} exceeds the 128-bit bound for N={n}")


class _Named(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def insecure(self) -> bool: ...
    @property
    def digest(self) -> str: ...


T = TypeVar("T", bound=_Named)


def canonical_fields(dataclass_obj: Any) -> dict[str, Any]:
    """The fields of a parameter-set dataclass as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(dataclass_obj).items()}


def digest_of(tag: bytes, canonical: dict[str, Any]) -> str:
    """SHA-256 over a domain tag and the canonical JSON of a set, hex."""
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(tag + b"\x00" + blob).hexdigest()


class Registry(Generic[T]):
    """Validated sets of one kind, by name.

    Args:
        kind: how errors name the sets (e.g. ``"blind parameter set"``).
        sets: the validated sets.
    """

    def __init__(self, kind: str, sets: Iterable[T]) -> None:
        self.kind = kind
        self._sets = {s.name: s for s in sets}

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._sets)})"

    def names(self, *, include_insecure: bool = False) -> list[str]:
        """Registered names, sorted; test-only sets only on request."""
        return sorted(n for n, s in self._sets.items() if include_insecure or not s.insecure)

    def get(self, name: str, *, allow_insecure: bool = False) -> T:
        """The set called ``name``.

        Args:
            name: a registered name.
            allow_insecure: permit ``INSECURE*`` sets (tests only).

        Returns:
            The set.

        Raises:
            ParameterError: not a string, unknown name, or an insecure set
                without permission (the message says how to give it).
        """
        if not isinstance(name, str):
            raise ParameterError(f"a {self.kind} is named by a string, got {type(name).__name__}")
        ps = self._sets.get(name)
        if ps is None:
            raise ParameterError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        if ps.insecure and not allow_insecure:
            # Say how to get it: the tests and demos that need these sets are where this refusal is met.
            raise ParameterError(f"{self.kind} {name!r} is below 128-bit security and for tests only;"
                                 " pass allow_insecure=True (pprm init --allow-insecure) to use it")
        return ps

    def by_digest(self, digest: str, *, allow_insecure: bool = False) -> T:
        """The set with this digest (the downgrade check for peers).

        Raises:
            ParameterError: no allowed set has this digest.
        """
        for ps in self._sets.values():
            if ps.digest == digest:
                return self.get(ps.name, allow_insecure=allow_insecure)
        raise ParameterError(f"parameter digest matches no allowed {self.kind}")
