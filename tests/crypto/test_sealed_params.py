"""Parameter sets: validation, the 2024 security bound, insecure sets, pinned digests."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import pytest

from pprm.crypto import params
from pprm.crypto.context import CkksContext
from pprm.errors import ParameterError
from tests.helpers import INSECURE_SEALED

DIGESTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "params_digests.json")


def _literal(base: str, /, **changes: Any) -> dict[str, Any]:
    """The registered literal of ``base`` with some fields replaced."""
    lit = next(dict(x) for x in params._LITERALS if x["name"] == base)
    lit.update(changes)
    return lit


@pytest.fixture(scope="module")
def pinned() -> dict[str, Any]:
    with open(DIGESTS, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.mark.parametrize("lit", params._LITERALS, ids=lambda lit: lit["name"])
def test_every_literal_validates_to_the_registered_set(lit: dict[str, Any]) -> None:
    ps = params._validate(lit)
    assert ps == params.get(lit["name"], allow_insecure=True)
    assert ps.data_primes == 1
    if not ps.insecure:
        assert ps.log_q <= params.HE_MAX_LOG_Q[ps.poly_modulus_degree]


@pytest.mark.parametrize("name", params.names(include_insecure=True))
def test_every_registered_set_builds_a_seal_context(name: str) -> None:
    ps = params.get(name, allow_insecure=True)
    ctx = CkksContext(ps)
    assert ctx.slots == ps.slots == ps.poly_modulus_degree // 2
    # ctx.moduli are the data-level primes; a special prime (complex sets) is key-switching only.
    assert [m.bit_length() for m in ctx.moduli] == list(ps.coeff_modulus_bits[:ps.data_primes])


def test_default_is_registered_and_secure() -> None:
    ps = params.get(params.DEFAULT_PARAMS)
    assert not ps.insecure
    assert params.DEFAULT_PARAMS in params.names()


@pytest.mark.parametrize(("n", "bits"), [
    (4096, [60, 48]),          # 108 > 107
    (8192, [60, 60, 60, 40]),  # 220 > 214
    (16384, [60] * 7 + [20]),  # 440 > 431
    (32768, [60] * 14 + [49]),  # 889 > 868
])
def test_he_2024_bound_is_enforced(n: int, bits: list[int]) -> None:
    lit = _literal("pprm-sealed-n8192-v1", name="pprm-test-too-big", poly_modulus_degree=n,
                   coeff_modulus_bits=bits)
    with pytest.raises(ParameterError, match="128-bit bound"):
        params._validate(lit)


def test_he_bound_is_inclusive_at_the_limit() -> None:
    # log Q = 60 + 47 = 107 is exactly the N=4096 bound; the second prime is
    # SEAL's special prime, so the computation still runs at one data prime.
    ps = params._validate(_literal("pprm-sealed-n4096-v1", name="pprm-test-edge", coeff_modulus_bits=[60, 47]))
    assert ps.log_q == params.HE_MAX_LOG_Q[4096]


def test_ring_dimension_without_a_bound_is_refused_for_secure_sets() -> None:
    lit = _literal("pprm-sealed-n8192-v1", name="pprm-test-n2048", poly_modulus_degree=2048)
    with pytest.raises(ParameterError, match="128-bit bound"):
        params._validate(lit)


def test_bound_table_matches_the_2024_guidelines() -> None:
    assert params.HE_MAX_LOG_Q == {4096: 107, 8192: 214, 16384: 431, 32768: 868}


@pytest.mark.parametrize(("changes", "match"), [
    ({"poly_modulus_degree": 3000}, "power of two"),
    ({"poly_modulus_degree": 512}, "power of two"),
    ({"insecure": True}, "INSECURE"),
    ({"name": "INSECURE-but-flagged-secure"}, "INSECURE"),
    ({"coeff_modulus_bits": [61]}, "20..60"),
    ({"coeff_modulus_bits": [19]}, "20..60"),
    ({"coeff_modulus_bits": [60, 50, 40]}, "one data prime"),
    ({"mask_log2_max": 12}, "masked result needs"),
    ({"gallery_scale_bits": 30}, "masked result needs"),
    ({"probe_scale_bits": 17, "gallery_scale_bits": 20}, "probe_scale_bits"),
    ({"template_grid_bits": 7}, "template grid"),
    ({"template_grid_bits": 15}, "template grid"),
    ({"decision_margin": 0.0}, "decision_margin"),
    ({"decision_margin": 0.1}, "decision_margin"),
    ({"gallery_scale_bits": "x"}, "malformed"),
])
def test_invalid_literals_are_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        params._validate(_literal("pprm-sealed-n8192-v1", **changes))


def test_missing_field_is_refused() -> None:
    lit = _literal("pprm-sealed-n8192-v1")
    del lit["decision_margin"]
    with pytest.raises(ParameterError, match="malformed"):
        params._validate(lit)


def test_insecure_sets_need_explicit_permission() -> None:
    insecure = [n for n in params.names(include_insecure=True) if n.startswith("INSECURE")]
    assert insecure, "the test-only set must be registered"
    for name in insecure:
        assert name not in params.names()
        with pytest.raises(ParameterError, match="insecure"):
            params.get(name)
        assert params.get(name, allow_insecure=True).insecure


@pytest.mark.parametrize("name", [n for n in params.names(include_insecure=True) if n.startswith("INSECURE")])
def test_refusing_an_insecure_set_says_how_to_allow_it(name: str) -> None:
    with pytest.raises(ParameterError) as info:
        params.get(name)
    assert str(info.value) == (f"parameter set {name!r} is below 128-bit security and for tests only;"
                               " pass allow_insecure=True (pprm init --allow-insecure) to use it")
    with pytest.raises(ParameterError, match="allow_insecure=True"):
        params.by_digest(params.get(name, allow_insecure=True).digest)


def test_the_cli_flag_named_in_the_refusal_exists() -> None:
    from pprm.cli.main import build_parser

    init = build_parser().parse_args(["init", "x", "--name", "DE", "--allow-insecure"])
    assert init.allow_insecure is True


@pytest.mark.parametrize("name", [None, 5, ["x"], b"pprm-sealed-n8192-complex-v1"])
def test_a_name_that_is_not_a_string_is_a_parameter_error(name: object) -> None:
    with pytest.raises(ParameterError, match=f"parameter set is named by a string, got {type(name).__name__}"):
        params.get(name)  # type: ignore[arg-type]


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ParameterError, match="unknown"):
        params.get("pprm-sealed-n8192-v2")


def test_parameter_sets_are_immutable() -> None:
    ps = params.get(params.DEFAULT_PARAMS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ps.mask_log2_max = 30  # type: ignore[misc]


def test_digests_are_pinned(pinned: dict[str, Any]) -> None:
    # Regenerate with tests/data/make_vectors.py only on a deliberate change.
    assert sorted(pinned) == params.names(include_insecure=True)
    for name, want in pinned.items():
        ps = params.get(name, allow_insecure=True)
        assert ps.canonical() == want["canonical"], name
        assert ps.digest == want["digest"], name


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(params.ParameterSet)])
def test_every_field_feeds_the_digest(field: str) -> None:
    ps = params.get(params.DEFAULT_PARAMS)
    value = getattr(ps, field)
    if isinstance(value, bool):
        other: Any = not value
    elif isinstance(value, str):
        other = value + "x"
    elif isinstance(value, tuple):
        other = (*value, 20)
    elif isinstance(value, float):
        other = value * 2
    else:
        other = value + 1
    assert dataclasses.replace(ps, **{field: other}).digest != ps.digest


def test_digests_are_distinct() -> None:
    all_sets = [params.get(n, allow_insecure=True) for n in params.names(include_insecure=True)]
    assert len({ps.digest for ps in all_sets}) == len(all_sets)


def test_by_digest_finds_the_set() -> None:
    for name in params.names():
        ps = params.get(name)
        assert params.by_digest(ps.digest) is ps


def test_by_digest_refuses_downgrades() -> None:
    insecure = params.get(INSECURE_SEALED, allow_insecure=True)
    # A peer announcing the insecure set is refused unless tests allow it.
    with pytest.raises(ParameterError):
        params.by_digest(insecure.digest)
    assert params.by_digest(insecure.digest, allow_insecure=True) is insecure
    # A set that differs from a registered one in any constant is unknown,
    # even under its registered name.
    weaker = dataclasses.replace(params.get(params.DEFAULT_PARAMS), mask_log2_max=4)
    with pytest.raises(ParameterError, match="no allowed"):
        params.by_digest(weaker.digest)
    with pytest.raises(ParameterError):
        params.by_digest("00" * 32)
    with pytest.raises(ParameterError):
        params.by_digest(params.get(params.DEFAULT_PARAMS).digest.upper())
