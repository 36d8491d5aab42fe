"""A state's configuration: validated once, immutable afterwards."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.errors import ParameterError, StateError

__all__ = ["StateConfig", "NAME_PATTERN"]

NAME_PATTERN = re.compile(r"^[A-Z][A-Z0-9-]{1,15}$")


@dataclass(frozen=True)
class StateConfig:
    """Settings of one state.

    Attributes:
        name: state code, e.g. ``DE`` (upper case, 2-16 characters).
        threshold: decision threshold tau on cosine similarity.
        params: name of the CKKS parameter set.
        k: at most this many candidates are released per query.
        dim: template dimension of the gallery (512 for ArcFace).
        query_ttl: seconds a query (and a follow-up) stays valid.
        token_ttl: seconds a released token can be followed up.
        allow_insecure: accept ``INSECURE*`` parameter sets (tests only).
        blind_params: name of the blind-profile parameter set this state
            answers with and queries with.
        profiles: per-peer default profile (``"sealed"`` or ``"blind"``) for
            queries this state sends; peers not listed get ``"sealed"``.
        blind_key_ttl: seconds a blind-profile key pair may be used before it
            is retired (it is also retired after every follow-up).
    """

    name: str
    threshold: float = 0.4
    params: str = param_sets.DEFAULT_PARAMS
    k: int = 10
    dim: int = 512
    query_ttl: int = 3600
    token_ttl: int = 7 * 24 * 3600
    allow_insecure: bool = False
    blind_params: str = blind_param_sets.DEFAULT_BLIND_PARAMS
    profiles: dict[str, str] = field(default_factory=dict)
    blind_key_ttl: int = 24 * 3600

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ParameterError("state name must be 2-16 characters: A-Z, digits, '-', starting with a letter")
        # Below 0.05 impostor scores (std ~0.044 at d=512) clear the threshold;
        # above 0.95 no genuine pair does.
        if not 0.05 <= float(self.threshold) <= 0.95:
            raise ParameterError("threshold must be between 0.05 and 0.95")
        # Prüm caps candidate lists; 1000 is far beyond any national rule.
        if not 1 <= int(self.k) <= 1000:
            raise ParameterError("candidate cap k must be between 1 and 1000")
        if not 16 <= int(self.dim) <= 4096:
            raise ParameterError("dimension must be between 16 and 4096")
        if not 60 <= int(self.query_ttl) <= 7 * 24 * 3600:
            raise ParameterError("query_ttl must be between one minute and one week")
        if not 3600 <= int(self.token_ttl) <= 31 * 24 * 3600:
            raise ParameterError("token_ttl must be between one hour and 31 days")
        param_sets.get(self.params, allow_insecure=self.allow_insecure)
        blind_param_sets.get(self.blind_params, allow_insecure=self.allow_insecure)
        if not isinstance(self.profiles, dict) or any(
                not isinstance(k, str) or not NAME_PATTERN.fullmatch(k) or v not in ("sealed", "blind")
                for k, v in self.profiles.items()):
            raise ParameterError("profiles must map state codes to 'sealed' or 'blind'")
        if not 60 <= int(self.blind_key_ttl) <= 31 * 24 * 3600:
            raise ParameterError("blind_key_ttl must be between one minute and 31 days")

    def profile_for(self, peer: str) -> str:
        """The default query profile for ``peer``."""
        return self.profiles.get(peer, "sealed")

    @property
    def blind_parameter_set(self) -> blind_param_sets.BlindParameterSet:
        return blind_param_sets.get(self.blind_params, allow_insecure=self.allow_insecure)

    @property
    def parameter_set(self) -> param_sets.ParameterSet:
        return param_sets.get(self.params, allow_insecure=self.allow_insecure)

    def to_json(self) -> dict[str, Any]:
        return {"format": "pprm-state/1", **asdict(self)}

    @classmethod
    def from_json(cls, obj: Any) -> StateConfig:
        try:
            if obj.pop("format") != "pprm-state/1":
                raise StateError("state config has an unknown format")
            return cls(**obj)
        except (TypeError, KeyError, AttributeError):
            raise StateError("state config is corrupt") from None
