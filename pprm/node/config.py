"""A state's configuration: validated once, immutable afterwards.

The *policy* is the part of it an operator may change after ``init``
(:data:`POLICY_FIELDS`: threshold, candidate cap, purposes, quotas, per-peer
profiles and lifetimes); the rest (name, parameter sets, dimension) is fixed
with the keys. :func:`policy_digest` is the one digest of a policy: the audit
log records it at ``init`` and at every ``pprm policy set``, and the signed
audit head covers it, so that a hand edit of ``state.json`` is detected
(docs/DESIGN.md section 7).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pprm._fs import read_json
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.errors import ParameterError, StateError
from pprm.profile import DEFAULT_PROFILE, Profile, is_profile
from pprm.protocol import canonical
from pprm.protocol.messages import MAX_PURPOSE

__all__ = [
    "StateConfig",
    "NAME_PATTERN",
    "DEFAULT_PURPOSES",
    "MAX_QUOTA",
    "QUOTA_WINDOW",
    "POLICY_FIELDS",
    "POLICY_FORMAT",
    "STATE_FORMAT",
    "policy_of",
    "policy_text",
    "policy_digest",
    "policy_text_digest",
    "parse_policy_text",
    "read_state_config",
]

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
STATE_FORMAT = "pprm-state/1"
POLICY_FORMAT = "pprm-policy/1"
# The settings `pprm policy set` changes and the policy digest covers. Not
# here: name, params, blind_params, dim and allow_insecure, which are fixed
# with the keys and the card at init.
POLICY_FIELDS = ("threshold", "k", "purposes", "quota_per_case", "quota_per_peer", "profiles", "query_ttl",
                 "token_ttl", "blind_key_ttl")
_DAY = 24 * 3600
# Integer settings: (low, high, unit), checked by type and range alike.
_INTEGERS: dict[str, tuple[int, int, str]] = {
    # Prüm caps candidate lists; 1000 is far beyond any national rule.
    "k": (1, 1000, ""),
    "dim": (16, 4096, ""),
    "query_ttl": (60, 7 * _DAY, " seconds (one minute to one week)"),
    "token_ttl": (3600, 31 * _DAY, " seconds (one hour to 31 days)"),
    "blind_key_ttl": (60, 31 * _DAY, " seconds (one minute to 31 days)"),
    "quota_per_case": (1, MAX_QUOTA, ""),
    "quota_per_peer": (1, MAX_QUOTA, ""),
}


def _integer(name: str, value: object) -> int:
    low, high, unit = _INTEGERS[name]
    # bool is an int in Python, and a JSON "1.0" or "10" is not a count.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise ParameterError(f"{name} must be an integer between {low} and {high}{unit}")
    return int(value)


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

    Every setting is checked for its type and its range; an error names the
    setting (``k must be an integer between 1 and 1000``).

    Raises:
        ParameterError: a setting of the wrong type or out of range.
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
        # above 0.95 no genuine pair does. A string is refused, not parsed:
        # state.json holds numbers.
        tau = self.threshold
        if (isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not math.isfinite(float(tau))
                or not 0.05 <= float(tau) <= 0.95):
            raise ParameterError("threshold must be a number between 0.05 and 0.95")
        object.__setattr__(self, "threshold", float(tau))
        for name in _INTEGERS:
            object.__setattr__(self, name, _integer(name, getattr(self, name)))
        if type(self.allow_insecure) is not bool:
            raise ParameterError("allow_insecure must be true or false")
        for what in ("params", "blind_params"):
            value = getattr(self, what)
            if not isinstance(value, str):
                raise ParameterError(f"{what} must be the name of a parameter set")
            try:
                if what == "params":
                    param_sets.get(value, allow_insecure=self.allow_insecure)
                else:
                    blind_param_sets.get(value, allow_insecure=self.allow_insecure)
            except ParameterError as exc:
                raise ParameterError(f"{what}: {exc}") from None
        if not isinstance(self.profiles, dict) or any(
                not isinstance(k, str) or not NAME_PATTERN.fullmatch(k) or not is_profile(v)
                for k, v in self.profiles.items()):
            raise ParameterError("profiles must map state codes to 'sealed' or 'blind'")
        if isinstance(self.purposes, str) or not isinstance(self.purposes, (list, tuple)):
            raise ParameterError("purposes must be a list of strings")
        # state.json holds a list; the config keeps a tuple (immutable).
        object.__setattr__(self, "purposes", tuple(self.purposes))
        if not 1 <= len(self.purposes) <= _MAX_PURPOSES:
            raise ParameterError(f"purposes must list between 1 and {_MAX_PURPOSES} purposes")
        for purpose in self.purposes:
            if (not isinstance(purpose, str) or not purpose or len(purpose) > MAX_PURPOSE
                    or not purpose.isprintable() or purpose != purpose.strip()):
                raise ParameterError(f"purposes must each be printable text of 1..{MAX_PURPOSE} characters "
                                     "without leading or trailing spaces")
        if len(set(self.purposes)) != len(self.purposes):
            raise ParameterError("purposes must not repeat")

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
        return {"format": STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, obj: Any) -> StateConfig:
        """The configuration in a parsed ``state.json``.

        Args:
            obj: the parsed JSON (not modified).

        Returns:
            The validated configuration; settings missing from older files
            take their defaults.

        Raises:
            StateError: not an object, an unknown format, an unknown setting
                or no name.
            ParameterError: a setting of the wrong type or out of range (the
                message names it).
        """
        if not isinstance(obj, dict):
            raise StateError("state config is corrupt: not a JSON object")
        settings = dict(obj)
        if settings.pop("format", None) != STATE_FORMAT:
            raise StateError("state config has an unknown format")
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            raise StateError(f"state config has an unknown setting {unknown[0]!r}")
        if "name" not in settings:
            raise StateError("state config has no name")
        return cls(**settings)


def read_state_config(path: str) -> StateConfig:
    """Read and validate a ``state.json``.

    Args:
        path: the file.

    Returns:
        The configuration.

    Raises:
        StateError: the file is missing, is not JSON, or holds an invalid
            setting: ``state.json is invalid: k must be an integer ...``.
    """
    try:
        obj = read_json(path)
    except FileNotFoundError:
        raise StateError("state.json is missing") from None
    except (ValueError, RecursionError):
        raise StateError("state.json is corrupt") from None
    try:
        return StateConfig.from_json(obj)
    except ParameterError as exc:
        raise StateError(f"state.json is invalid: {exc}") from None


# -- the policy and its digest ------------------------------------------------------------

def policy_of(config: StateConfig) -> dict[str, Any]:
    """The policy part of a configuration, as JSON-ready values.

    Args:
        config: a validated configuration.

    Returns:
        ``{"format": "pprm-policy/1", <each of POLICY_FIELDS>}``; purposes as
        a list, profiles as a plain dict.
    """
    out: dict[str, Any] = {"format": POLICY_FORMAT}
    for name in POLICY_FIELDS:
        value = getattr(config, name)
        out[name] = list(value) if name == "purposes" else dict(value) if name == "profiles" else value
    return out


def policy_text(config: StateConfig) -> str:
    """The canonical JSON of :func:`policy_of` (sorted keys, no spaces, ASCII): what the digest covers."""
    return canonical.encode(policy_of(config)).decode("ascii")


def policy_text_digest(text: str) -> str:
    """SHA-256 (hex) of a canonical policy text, as :func:`policy_text` makes it.

    Args:
        text: the canonical JSON, e.g. as recorded in the audit log.

    Returns:
        64 hex digits.
    """
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def policy_digest(config: StateConfig) -> str:
    """The digest of a state's policy: SHA-256 (hex) of its canonical JSON.

    The JSON carries its format tag (``pprm-policy/1``), so the digest of a
    policy never equals that of any other canonical object pprm hashes; it is
    reproducible by hand from the ``policy`` text an audit entry records.

    Args:
        config: a validated configuration.

    Returns:
        64 hex digits; equal for two configurations exactly when every field
        of :data:`POLICY_FIELDS` is equal.
    """
    return policy_text_digest(policy_text(config))


def parse_policy_text(text: str) -> dict[str, Any]:
    """The policy fields in a canonical policy text (the inverse of :func:`policy_text`).

    Args:
        text: the canonical JSON.

    Returns:
        The fields of :data:`POLICY_FIELDS`, without the format tag (values
        as JSON has them: purposes a list).

    Raises:
        StateError: not a canonical policy text of this format.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise StateError("recorded policy is not JSON") from None
    if not isinstance(obj, dict) or obj.get("format") != POLICY_FORMAT or set(obj) != {"format", *POLICY_FIELDS}:
        raise StateError("recorded policy is not a pprm-policy/1 object")
    return {name: obj[name] for name in POLICY_FIELDS}
