"""pprm.profile: the one profile type, and how untrusted text becomes one."""

from __future__ import annotations

import pytest

from pprm.errors import MessageError, ParameterError
from pprm.node.config import StateConfig
from pprm.profile import DEFAULT_PROFILE, PROFILES, is_profile, parse_profile
from pprm.protocol import envelope
from tests.helpers import header


def test_the_profiles() -> None:
    assert PROFILES == ("sealed", "blind") == envelope.PROFILES
    assert DEFAULT_PROFILE == "sealed"
    for p in PROFILES:
        assert is_profile(p) and parse_profile(p) == p and parse_profile(p, on_wire=True) == p


class _Text(str):
    pass


@pytest.mark.parametrize("value", ["", "Sealed", " blind", "blind\n", "open", None, 1, ["sealed"], _Text("blind"),
                                   "x" * 1000])
def test_anything_else_is_the_error_of_where_it_came_from(value: object) -> None:
    assert not is_profile(value)
    with pytest.raises(ParameterError, match="unknown profile") as config:
        parse_profile(value)
    assert not isinstance(config.value, MessageError)
    with pytest.raises(MessageError, match="unknown profile") as wire:
        parse_profile(value, on_wire=True)
    assert not isinstance(wire.value, ParameterError)
    for err in (config.value, wire.value):
        assert "\n" not in str(err) and len(str(err)) < 100


def test_headers_and_configs_take_only_profiles() -> None:
    good = header().to_json()
    assert envelope.Header.from_json(good).profile == good["profile"]
    with pytest.raises(MessageError):
        envelope.Header.from_json({**good, "profile": "open"})
    assert StateConfig(name="DE", profiles={"FR": "blind"}).profile_for("FR") == "blind"
    assert StateConfig(name="DE").profile_for("FR") == "sealed"
    with pytest.raises(ParameterError, match="profiles"):
        StateConfig(name="DE", profiles={"FR": "open"})  # type: ignore[dict-item]
