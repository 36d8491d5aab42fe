"""A state's configuration: validated once, immutable afterwards."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.errors import ParameterError, StateError
from pprm.profile import DEFAULT_PROFILE, Profile, is_profile
from pprm.protocol.messages import MAX_PURPOSE

__all__ = ["StateConfig", "NAME_PATTERN", "DEFAULT_PURPOSES", "MAX_QUOTA", "QUOTA_WINDOW"]

NAME_PATTERN = re.compile(r"^[A-Z][A-Z0-9-]{1,15}$")
# The purposes Prüm II allows a facial-image search for.
DEFAULT_PURPOSES = ("serious-crime", "missing-person", "unidentified-remains")
# Quotas count the queries answered for one requesting state over this
# rolling window, seconds.
QUOTA_WINDOW = 24 * 3600
# Upper bound of either quota: far beyond any real workload, it only keeps
# the quota file bounded.
MAX_QUOTA = 1_000_000
_MAX_PURPOSES = 64


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
        purposes: the purposes this state answers queries for, and may send
            them with; matched as exact strings.
        quota_per_case: queries answered per requesting state per case
            reference in a rolling 24 hours.
        quota_per_peer: queries answered per requesting state in a rolling
            24 hours, all cases together.

    Policy defaults, and why (each is a setting in ``state.json``):

    - ``k = 10``: Prüm exchanges return short candidate lists for a human
      examiner; ten is the usual upper end and keeps what one query can
      reveal small.
    - ``blind_key_ttl = 24 h``: a requester's blind key decrypts one day's
      answers at most, and is retired at the first follow-up anyway.
    - ``purposes = ("serious-crime", "missing-person",
      "unidentified-remains")``: the purposes Prüm II names for facial-image
      searches. A query with any other purpose gets a signed refusal.
    - ``quota_per_case = 100``: a normal investigation sends a handful of
      probes per case to a peer (several photos, several suspects); 100 a
      day never blocks one, while a requester trawling the gallery with one
      case reference is stopped early.
    - ``quota_per_peer = 2000``: twenty cases at the case quota, far above
      the daily volume between two states today; it bounds what a misused
      or compromised requester key can extract in a day.

    A query over either quota, or with a purpose not on the list, gets a
    signed refusal and an audit entry; it is never matched. Quotas count
    answered queries only, so refusals do not use them up.
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
    profiles: dict[str, Profile] = field(default_factory=dict)
    blind_key_ttl: int = 24 * 3600
    purposes: tuple[str, ...] = DEFAULT_PURPOSES
    quota_per_case: int = 100
    quota_per_peer: int = 2000

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
                not isinstance(k, str) or not NAME_PATTERN.fullmatch(k) or not is_profile(v)
                for k, v in self.profiles.items()):
            raise ParameterError("profiles must map state codes to 'sealed' or 'blind'")
        if not 60 <= int(self.blind_key_ttl) <= 31 * 24 * 3600:
            raise ParameterError("blind_key_ttl must be between one minute and 31 days")
        if isinstance(self.purposes, str) or not isinstance(self.purposes, (list, tuple)):
            raise ParameterError("purposes must be a list of strings")
        # state.json holds a list; the config keeps a tuple (immutable).
        object.__setattr__(self, "purposes", tuple(self.purposes))
        if not 1 <= len(self.purposes) <= _MAX_PURPOSES:
            raise ParameterError(f"purposes must list between 1 and {_MAX_PURPOSES} purposes")
        for purpose in self.purposes:
            if (not isinstance(purpose, str) or not purpose or len(purpose) > MAX_PURPOSE
                    or not purpose.isprintable() or purpose != purpose.strip()):
                raise ParameterError(f"each purpose must be printable text of 1..{MAX_PURPOSE} characters "
                                     "without leading or trailing spaces")
        if len(set(self.purposes)) != len(self.purposes):
            raise ParameterError("purposes must not repeat")
        for what in ("quota_per_case", "quota_per_peer"):
            value = getattr(self, what)
            if type(value) is not int or not 1 <= value <= MAX_QUOTA:
                raise ParameterError(f"{what} must be an integer between 1 and {MAX_QUOTA}")

    def profile_for(self, peer: str) -> Profile:
        """The query profile configured for ``peer``.

        Args:
            peer: a state code.

        Returns:
            ``profiles[peer]``, or ``"sealed"`` for a peer not listed.
        """
        return self.profiles.get(peer, DEFAULT_PROFILE)

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
