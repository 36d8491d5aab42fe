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

__all__ = ["Registry", "canonical_fields", "digest_of"]


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

        Raises:
            ParameterError: unknown name, or an insecure set without permission.
        """
        ps = self._sets.get(name)
        if ps is None:
            raise ParameterError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        if ps.insecure and not allow_insecure:
            raise ParameterError(f"parameter set {name!r} is insecure and not allowed here")
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
