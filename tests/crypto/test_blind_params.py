"""Blind-profile parameter sets: validation, the security bound, pinned digests, the noise budget."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import pytest

from pprm.crypto import blind_params, params
from pprm.crypto.context import BlindContext
from pprm.errors import ParameterError
from tests.helpers import INSECURE_BLIND

DIGESTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "blind_params_digests.json")


def _literal(base: str, /, **changes: Any) -> dict[str, Any]:
    lit = next(dict(x) for x in blind_params._LITERALS if x["name"] == base)
    lit.update(changes)
    return lit


@pytest.mark.parametrize("lit", blind_params._LITERALS, ids=lambda lit: lit["name"])
def test_every_literal_validates_and_builds_a_context(lit: dict[str, Any]) -> None:
    ps = blind_params._validate(lit)
    assert ps == blind_params.get(lit["name"], allow_insecure=True)
    ctx = BlindContext(ps)
    assert [m.bit_length() for m in ctx.moduli] == list(ps.coeff_modulus_bits[:-1])
    assert ctx.slots == ps.poly_modulus_degree // 2
    assert ps.templates_per_block == ctx.slots * (2 if ps.complex_packing else 1)
    if not ps.insecure:
        assert ps.log_q <= params.HE_MAX_LOG_Q[ps.poly_modulus_degree]


def test_default_is_secure_and_registered() -> None:
    ps = blind_params.get(blind_params.DEFAULT_BLIND_PARAMS)
    assert not ps.insecure and ps.poly_modulus_degree == 16384
    assert ps.giant_steps * ps.baby_steps == ps.dim == 512


def test_digests_are_pinned() -> None:
    # Regenerate with tests/data/make_vectors.py only on a deliberate change.
    with open(DIGESTS, encoding="utf-8") as fh:
        pinned = json.load(fh)
    assert sorted(pinned) == blind_params.names(include_insecure=True)
    for name, want in pinned.items():
        ps = blind_params.get(name, allow_insecure=True)
        assert ps.canonical() == want["canonical"] and ps.digest == want["digest"], name


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(blind_params.BlindParameterSet)])
def test_every_field_feeds_the_digest(field: str) -> None:
    ps = blind_params.get(blind_params.DEFAULT_BLIND_PARAMS)
    value = getattr(ps, field)
    other: Any = (not value if isinstance(value, bool) else value + "x" if isinstance(value, str)
                  else (*value, 20) if isinstance(value, tuple) else value * 2 if isinstance(value, float)
                  else value + 1)
    assert dataclasses.replace(ps, **{field: other}).digest != ps.digest


def test_blind_and_sealed_digests_never_collide() -> None:
    blind = {blind_params.get(n, allow_insecure=True).digest for n in blind_params.names(include_insecure=True)}
    sealed = {params.get(n, allow_insecure=True).digest for n in params.names(include_insecure=True)}
    assert not blind & sealed


@pytest.mark.parametrize(("changes", "match"), [
    ({"coeff_modulus_bits": [60, 60, 60, 60, 60, 60, 60, 60]}, "128-bit bound"),
    ({"poly_modulus_degree": 12288}, "power of two"),
    ({"dim": 384}, "dim"),
    ({"baby_steps": 48}, "dim"),
    ({"coeff_modulus_bits": [60, 60, 60, 50]}, "special prime"),
    ({"coeff_modulus_bits": [60, 60]}, "rescale primes"),
    ({"mask_log2_max": 20}, "overflows"),
    ({"answer_drop_bits": 13}, "whole bytes"),
    ({"decision_margin": 0.5}, "decision_margin"),
    ({"insecure": True}, "INSECURE"),
    ({"probe_scale_bits": None}, "malformed"),
])
def test_bad_literals_are_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        blind_params._validate(_literal(blind_params.DEFAULT_BLIND_PARAMS, **changes))


def test_insecure_sets_need_permission_and_digests_resolve() -> None:
    with pytest.raises(ParameterError, match="insecure"):
        blind_params.get(INSECURE_BLIND)
    with pytest.raises(ParameterError, match="unknown"):
        blind_params.get("pprm-blind-n9-v0")
    ps = blind_params.get(blind_params.DEFAULT_BLIND_PARAMS)
    assert blind_params.by_digest(ps.digest) is ps
    insecure = blind_params.get(INSECURE_BLIND, allow_insecure=True)
    with pytest.raises(ParameterError):
        blind_params.by_digest(insecure.digest)
    with pytest.raises(ParameterError):
        blind_params.by_digest(params.get(params.DEFAULT_PARAMS).digest)


def test_refusing_an_insecure_set_says_how_to_allow_it() -> None:
    with pytest.raises(ParameterError) as info:
        blind_params.get(INSECURE_BLIND)
    assert str(info.value) == (f"blind parameter set {INSECURE_BLIND!r} is below 128-bit security and for tests"
                               " only; pass allow_insecure=True (pprm init --allow-insecure) to use it")
    with pytest.raises(ParameterError, match="blind parameter set is named by a string, got NoneType"):
        blind_params.get(None)  # type: ignore[arg-type]


def test_noise_budget_is_consistent() -> None:
    ps = blind_params.get(blind_params.DEFAULT_BLIND_PARAMS)
    # The real projection p + conj(p) doubles the probe: read one bit higher.
    assert ps.projected_scale_bits == ps.probe_scale_bits + 1
    assert ps.top_scale_bits == ps.projected_scale_bits + ps.diagonal_scale_bits + ps.mask_scale_bits == 164
    assert ps.flood_bits == 164 - 50 + 30 + 1
    # The window norms one level down: the lifted probe at 2**38, W at 2**76,
    # its factor r*tau/2 at 2**28, all of it one level down at 2**104.
    assert (ps.norm_probe_bits, ps.combine_scale_bits, ps.norm_factor_bits) == (38, 104, 28)
    # The answer keeps whole bytes after rounding: 48 of q0's 60 bits.
    assert (ps.coeff_modulus_bits[0] - ps.answer_drop_bits) % 8 == 0
