"""The packed masked answer (pprm.crypto.masked_codec): layout, budget, packing, decryption.

Values are encrypted directly at the masked result's level (SEAL, symmetric,
at ``2**result_scale_bits``), packed as the matcher packs them, and read back
both with the key service's numpy decryption and, independently, with SEAL
on a rebuilt ciphertext.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given
from hypothesis import strategies as st

from pprm.crypto import keys, params
from pprm.crypto import masked_codec as mc
from pprm.crypto.context import CkksContext
from pprm.errors import BackendError, CiphertextError, ParameterError
from tests.helpers import INSECURE_SEALED, INSECURE_SEALED_COMPLEX

PRODUCTION = "pprm-sealed-n8192-complex-v1"


@dataclasses.dataclass
class Keyed:
    ctx: CkksContext
    sk: seal.SecretKey
    layout: mc.MaskedLayout

    def encrypt(self, values: np.ndarray) -> bytes:
        """Pack an encryption of slot values at the result level, as the matcher packs its result."""
        ct = seal.Ciphertext()
        seal.Encryptor(self.ctx.seal, self.sk).encrypt_symmetric(
            self.ctx.encode(values, self.ctx.params.result_scale_bits), ct)
        self.ctx.evaluator.transform_from_ntt_inplace(ct)
        return mc.encode_masked(self.layout, self.ctx.to_residues(ct)[:, 0, :])

    def decryptor(self, threads: int = 1) -> mc.MaskedDecryptor:
        return mc.MaskedDecryptor(self.ctx, seal.Decryptor(self.ctx.seal, self.sk), threads)


def _keyed(name: str) -> Keyed:
    ctx = CkksContext(params.get(name, allow_insecure=True))
    sk, _pk = keys.generate(ctx)
    return Keyed(ctx, sk, mc.masked_layout(ctx.params, ctx.moduli[0]))


@pytest.fixture(scope="module", params=[INSECURE_SEALED_COMPLEX, PRODUCTION])
def keyed(request: pytest.FixtureRequest) -> Keyed:
    return _keyed(request.param)


@pytest.fixture(scope="module")
def small() -> Keyed:
    return _keyed(INSECURE_SEALED_COMPLEX)


def _values(rng: np.random.Generator, n: int, low: float = 1e-3, high: float = 3.0) -> np.ndarray:
    def part() -> np.ndarray:
        return rng.uniform(low, high, n) * rng.choice([-1.0, 1.0], n)
    return part() + 1j * part()


# -- layout and budget ---------------------------------------------------------------

@pytest.mark.parametrize("name", params.names(include_insecure=True))
def test_every_registered_set_has_a_layout_within_budget(name: str) -> None:
    ps = params.get(name, allow_insecure=True)
    lay = mc.masked_layout(ps, CkksContext(ps).moduli[0])
    assert lay.c0_bits + lay.c1_bits == mc.WORD_BITS
    assert lay.gain >= 1 and lay.noise_bound < lay.signal_min
    assert lay.nbytes == 8 * ps.poly_modulus_degree
    assert lay.nbytes / ps.templates_per_block == (8 if ps.packing == "complex" else 16)


def test_production_layout_is_the_documented_one() -> None:
    # The figures quoted in pprm.crypto.masked_codec's docstring and docs/DESIGN.md.
    ps = params.get(PRODUCTION)
    lay = mc.masked_layout(ps, CkksContext(ps).moduli[0])
    assert (lay.c1_bits, lay.c0_bits, lay.gain) == (36, 28, 5)
    assert lay.rho_cap == pytest.approx(88.8, abs=0.05)
    assert lay.key_bound == pytest.approx(443.7, abs=0.05)
    assert lay.noise_bound == pytest.approx(70_480, rel=1e-3)
    assert lay.signal_min == pytest.approx(89_450, rel=1e-3)
    # In units of the masked value: the bound sits under the smallest value that must decide.
    assert lay.signal_min / lay.value_scale == pytest.approx(1.066e-3, rel=1e-3)
    assert lay.noise_bound / lay.value_scale < 0.85e-3


def test_a_set_the_packing_cannot_serve_is_refused() -> None:
    lit = next(dict(x) for x in params._LITERALS if x["name"] == PRODUCTION)
    # A decision margin 20 times finer needs more than 64 bits per coefficient pair.
    ps = params._validate({**lit, "name": "pprm-test-fine", "decision_margin": 5e-5})
    with pytest.raises(ParameterError, match="64-bit"):
        mc.masked_layout(ps, 1152921504606748673)


# -- packing ----------------------------------------------------------------------------

@given(c0=st.integers(min_value=0), c1=st.integers(min_value=0), fill=st.integers(min_value=0, max_value=2**32))
def test_packing_rounds_each_coefficient_to_its_grid(small: Keyed, c0: int, c1: int, fill: int) -> None:
    lay = small.layout
    q0 = lay.q0
    c0, c1 = c0 % q0, c1 % q0
    coeffs = np.full((2, lay.n), fill % q0, dtype=np.uint64)
    coeffs[:, 0] = (c0, c1)
    blob = mc.encode_masked(lay, coeffs)
    assert len(blob) == lay.nbytes
    w = int(np.frombuffer(blob, "<u8")[0])
    for c, bits, got in ((c0, lay.c0_bits, w & ((1 << lay.c0_bits) - 1)), (c1, lay.c1_bits, w >> lay.c0_bits)):
        # got * q0 / 2**bits must be gain * c mod q0, up to the rounding (1/2
        # of a step, plus float64's 2**-14).
        back = got * q0 / 2**bits  # exact enough: a float of the rational
        target = (lay.gain * c) % q0
        dist = abs(back - target)
        dist = min(dist, q0 - dist)
        assert dist <= q0 / 2**bits * (0.5 + 2**-10)


def test_decryption_recovers_the_values_within_the_budget(keyed: Keyed) -> None:
    lay = keyed.layout
    rng = np.random.default_rng(7)
    truth = np.stack([_values(rng, keyed.ctx.slots) for _ in range(3)])
    blobs = [keyed.encrypt(v) for v in truth]
    opener = keyed.decryptor()
    got = opener.values(blobs)
    err = np.abs(got.real - truth.real).max(), np.abs(got.imag - truth.imag).max()
    assert max(err) < lay.noise_bound / lay.value_scale
    # SEAL on the rebuilt ciphertext reads the same values as the numpy path.
    dec = seal.Decryptor(keyed.ctx.seal, keyed.sk)
    for blob, mine in zip(blobs, got, strict=True):
        pt = seal.Plaintext()
        dec.decrypt(mc.rebuild_ciphertext(keyed.ctx, blob), pt)
        assert np.abs(keyed.ctx.decode_complex(pt) - mine).max() < 1e-6
    # Signs, in position order: real parts, then imaginary parts.
    signs = opener.signs(blobs)
    assert signs.shape == (3, keyed.ctx.n)
    assert np.array_equal(signs, np.concatenate([truth.real > 0, truth.imag > 0], axis=1))


def test_signs_at_the_smallest_value_that_must_decide(keyed: Keyed) -> None:
    # Every slot at +-signal_min (the budget's smallest masked value): all decide.
    lay = keyed.layout
    v_min = lay.signal_min / lay.value_scale
    rng = np.random.default_rng(8)
    n = keyed.ctx.slots
    blobs, want = [], []
    for _ in range(4):
        re, im = rng.choice([-1.0, 1.0], n), rng.choice([-1.0, 1.0], n)
        blobs.append(keyed.encrypt(v_min * (re + 1j * im)))
        want.append(np.concatenate([re > 0, im > 0]))
    assert np.array_equal(keyed.decryptor().signs(blobs), np.stack(want))


def test_threads_give_the_same_signs(small: Keyed) -> None:
    rng = np.random.default_rng(9)
    blobs = [small.encrypt(_values(rng, small.ctx.slots)) for _ in range(3)] * 12  # 36 blocks: 3 chunks
    one = small.decryptor(1).signs(blobs)
    assert np.array_equal(small.decryptor(2).signs(blobs), one)
    assert small.decryptor(2).signs([]).shape == (0, small.ctx.n)


def test_real_packing_decides_real_parts_only() -> None:
    k = _keyed(INSECURE_SEALED)
    rng = np.random.default_rng(10)
    v = _values(rng, k.ctx.slots).real
    signs = k.decryptor().signs([k.encrypt(v)])
    assert signs.shape == (1, k.ctx.slots)
    assert np.array_equal(signs[0], v > 0)


# -- refusals ------------------------------------------------------------------------------

def test_malformed_packed_ciphertexts_are_refused(small: Keyed) -> None:
    lay = small.layout
    good = small.encrypt(_values(np.random.default_rng(11), small.ctx.slots))
    opener = small.decryptor()
    transparent = np.frombuffer(good, "<u8") & np.uint64((1 << lay.c0_bits) - 1)
    length = "bytes, expected"
    for bad, match in ((good[:-1], length), (good[:-8], length), (good + b"\0", length), (b"", length),
                       ("x" * lay.nbytes, "not bytes"), (transparent.astype("<u8").tobytes(), "transparent")):
        with pytest.raises(CiphertextError, match=match) as exc:
            opener.signs([good, cast(Any, bad)])
        assert "\n" not in str(exc.value)
    with pytest.raises(CiphertextError, match="coefficient outside"):
        mc.encode_masked(lay, np.full((2, lay.n), lay.q0, dtype=np.uint64))
    with pytest.raises(CiphertextError, match="expected uint64"):
        mc.encode_masked(lay, np.zeros((2, lay.n), dtype=np.int64))


def test_a_key_beyond_the_bound_is_refused(small: Keyed, monkeypatch: pytest.MonkeyPatch) -> None:
    tight = dataclasses.replace(small.layout, key_bound=1.0)
    monkeypatch.setattr(mc, "masked_layout", lambda _p, _q: tight)
    with pytest.raises(BackendError, match="rotate the key"):
        small.decryptor()


def test_bernstein_cap_is_rarely_reached() -> None:
    # The cap's deviation shrinks like 1/sqrt(n) and grows with the tail asked for.
    mean, var, top = mc._mask_moments(8, 2)
    assert mean == pytest.approx(79.46, abs=0.05) and math.sqrt(var) == pytest.approx(74.2, abs=0.2)
    assert mc._bernstein(4096, var, top - mean) < mc._bernstein(512, var, top - mean)
    real_mean, _v, _t = mc._mask_moments(8, 1)
    assert real_mean == pytest.approx(255 / (8 * math.log(2)))
