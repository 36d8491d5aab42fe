"""The key service's decisions in C (native/pprm_decide.c) against the numpy path.

* The C FFT against numpy's for every length 2 .. 16384, both directions.
* Slot values from C against :meth:`MaskedDecryptor.values` on real masked
  results (the test complex set, and the production set N = 8192), within
  :data:`V_TOL` output units; signs identical wherever ``|V|`` exceeds it.
* threads=1 and threads=2 give byte-identical output; random words do not
  crash and agree with numpy; malformed input raises typed errors; the key
  copy is wiped on close.
* :class:`SealedDecider` gives the same ids on both paths, and takes the C
  path exactly when the backend is native.

Tests of the C code itself are skipped when the extension is not built; the
decider's tests run on either backend (``PPRM_BACKEND=numpy`` included).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto.masked_codec import MaskedDecryptor, MaskedLayout
from pprm.errors import BackendError, CiphertextError, ParameterError
from pprm.matching import decide, kernel, kernel_native
from pprm.matching.decide_native import NativeSigns, native_fft
from tests.helpers import INSECURE_SEALED, INSECURE_SEALED_COMPLEX, ScoredWorld
from tests.matching.test_sealed_masked_answer import Keyed, _keyed

native_only = pytest.mark.skipif(not kernel_native.available(), reason="native extension not built")

PRODUCTION = "pprm-sealed-n8192-complex-v1"
# The two paths' slot values may differ by this many output units. Each path
# is within masked_codec's _FFT_SLACK (1 unit) of the exact value, so they
# are within 2 of each other; measured at most 0.5 at N = 8192 (random
# words, whose coefficients fill the whole range) and 0.04 at N = 1024.
# The margin a decision that matters keeps is signal_min - noise_bound,
# about 19,000 units at N = 8192.
V_TOL = 2.0
# A float64 FFT of length h is within a few 2**-53 * log2(h) of the vector
# norm in every entry; measured at most 1.4e-15 * ||x|| at h = 16384.
FFT_REL = 4.0 * 2.0**-53


def _fft_error_bound(x: np.ndarray) -> float:
    h = x.shape[0]
    return FFT_REL * max(1, h.bit_length() - 1) * float(np.linalg.norm(x))


@native_only
@pytest.mark.parametrize("h", [2**k for k in range(1, 15)])
def test_the_fft_is_numpys_for_every_length(h: int) -> None:
    rng = np.random.default_rng(h)
    x = rng.standard_normal(h) * 1e3 + 1j * rng.standard_normal(h)
    bound = _fft_error_bound(x)
    assert float(np.abs(native_fft(x) - np.fft.fft(x)).max()) <= bound
    assert float(np.abs(native_fft(x, inverse=True) - np.fft.ifft(x, norm="forward")).max()) <= bound


@native_only
@pytest.mark.parametrize("h", [2, 4, 8, 16, 32, 2048, 4096, 8192])
def test_the_mask_drawings_fft_takes_bit_reversed_input(h: int) -> None:
    # pprm_fft_dit, which pprm_maskdraw.c calls: bit-reversed in, natural out, forward sign.
    from pprm.crypto.encoding import bit_reversal
    from pprm.matching.decide_native import fft_table

    ffi, lib = kernel_native.handles()
    rng = np.random.default_rng(h + 1)
    x = rng.standard_normal(h) * 1e3 + 1j * rng.standard_normal(h)
    scrambled = np.empty_like(x)
    scrambled[bit_reversal(h)] = x
    re, im = np.ascontiguousarray(scrambled.real), np.ascontiguousarray(scrambled.imag)
    table = fft_table(h)
    assert lib.pprm_fft_dit(ffi.from_buffer("double[]", re), ffi.from_buffer("double[]", im), h,
                            ffi.from_buffer("double[]", table)) == lib.PPRM_DECIDE_OK
    assert float(np.abs(re + 1j * im - np.fft.fft(x)).max()) <= _fft_error_bound(x)
    assert lib.pprm_fft_dit(ffi.from_buffer("double[]", re), ffi.from_buffer("double[]", im), 3,
                            ffi.from_buffer("double[]", table)) == lib.PPRM_DECIDE_EINVAL


@native_only
def test_the_fft_refuses_lengths_it_does_not_serve() -> None:
    for bad in (np.zeros(3, complex), np.zeros(1, complex), np.zeros(32768, complex), np.zeros((2, 4), complex)):
        with pytest.raises(ParameterError):
            native_fft(bad)


# -- masked results ------------------------------------------------------------------

@dataclasses.dataclass
class Masked:
    """A key, its numpy decryptor, and masked results made by the matcher's own masking."""

    keyed: Keyed
    opener: MaskedDecryptor
    blobs: list[bytes]

    @property
    def layout(self) -> MaskedLayout:
        return self.opener.layout


def _masked(name: str, tmp_path_factory: pytest.TempPathFactory, blocks: int) -> Masked:
    keyed = _keyed(name, tmp_path_factory)
    ps = keyed.ps
    rng = np.random.default_rng(11)
    tau = 0.4
    score_blocks = []
    for b in range(blocks):
        # Scores around tau, some within the margin; one block with free positions.
        scores = tau + rng.uniform(-0.01, 0.01, ps.templates_per_block) * (10.0 if b % 2 else 1.0)
        score_blocks.append(keyed.block(scores))
    w = np.array([2**ps.probe_scale_bits], dtype=np.int64)
    occupied = np.ones(ps.templates_per_block, dtype=bool)
    free = occupied.copy()
    free[::3] = False
    out = keyed.scorer.run(blocks, lambda b: score_blocks[b], lambda b: free if b == 0 else occupied, w, tau)
    opener = MaskedDecryptor(keyed.ctx, seal.Decryptor(keyed.ctx.seal, keyed.sk))
    return Masked(keyed, opener, [cts[0] for cts in out])


@pytest.fixture(scope="module", params=[INSECURE_SEALED_COMPLEX, INSECURE_SEALED, PRODUCTION])
def masked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Masked:
    return _masked(request.param, tmp_path_factory, 3)


@pytest.fixture(scope="module", params=[INSECURE_SEALED_COMPLEX, INSECURE_SEALED])
def masked_small(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Masked:
    return _masked(request.param, tmp_path_factory, 1)


def _agree(ns: NativeSigns, opener: MaskedDecryptor, blobs: Sequence[bytes] | np.ndarray) -> None:
    """Values within V_TOL output units, signs identical wherever |V| exceeds it."""
    lay = opener.layout
    as_blobs = [w.astype("<u8").tobytes() for w in blobs] if isinstance(blobs, np.ndarray) else blobs
    want_v = opener.values(as_blobs) * lay.value_scale
    got_v = ns.values(blobs) * lay.value_scale
    assert float(np.abs(got_v.real - want_v.real).max()) <= V_TOL
    assert float(np.abs(got_v.imag - want_v.imag).max()) <= V_TOL
    want, got = opener.signs(as_blobs), ns.signs(blobs)
    assert got.dtype == want.dtype == np.bool_ and got.shape == want.shape
    h = lay.n // 2
    clear = np.abs(want_v.real) > V_TOL
    if opener.packing == "complex":
        clear = np.concatenate([clear, np.abs(want_v.imag) > V_TOL], axis=1)
    assert np.array_equal(got[clear], want[clear])
    assert got.shape[1] == (2 * h if opener.packing == "complex" else h)


@native_only
def test_values_and_signs_are_the_numpy_paths(masked: Masked) -> None:
    ns = NativeSigns(masked.opener, threads=2)
    _agree(ns, masked.opener, masked.blobs)
    # On real masked results every sign agrees: no slot sits within float error of 0.
    assert np.array_equal(ns.signs(masked.blobs), masked.opener.signs(masked.blobs))
    signs = ns.signs(masked.blobs)
    assert signs.any() and not signs.all()


@native_only
def test_one_thread_and_two_give_the_same_bytes(masked: Masked) -> None:
    one, two = NativeSigns(masked.opener, threads=1), NativeSigns(masked.opener, threads=2)
    blobs = masked.blobs * 3  # more ciphertexts than threads, in any interleaving
    assert np.array_equal(one.signs(blobs), two.signs(blobs))
    v1, v2 = one.values(blobs), two.values(blobs)
    assert np.array_equal(v1.view(np.uint64), v2.view(np.uint64))


@native_only
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 5))
def test_random_words_agree_with_numpy(masked_small: Masked, seed: int, count: int) -> None:
    masked = masked_small
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, size=(count, masked.layout.n), dtype=np.uint64)
    _agree(NativeSigns(masked.opener, threads=2), masked.opener, words)


# -- refusals ------------------------------------------------------------------------

@native_only
def test_malformed_input_raises_typed_errors(masked: Masked) -> None:
    ns = NativeSigns(masked.opener)
    lay = masked.layout
    first = masked.blobs[0]
    words = np.frombuffer(first, "<u8")
    transparent = (words & np.uint64((1 << lay.c0_bits) - 1)).astype("<u8").tobytes()
    for bad in (first[:100], first[:-1], first + b"\x00" * 8, b"", "text"):
        with pytest.raises(CiphertextError):
            ns.signs([masked.blobs[1], bad])  # type: ignore[list-item]
    with pytest.raises(CiphertextError, match="masked ciphertext 1 is transparent"):
        ns.signs([masked.blobs[1], transparent, masked.blobs[2]])
    with pytest.raises(CiphertextError, match="transparent"):
        ns.values([transparent])
    for arr in (np.zeros((2, lay.n + 1), np.uint64), np.zeros(lay.n, np.uint64), np.ones((1, lay.n), np.int64)):
        with pytest.raises(CiphertextError):
            ns.signs(arr)
    # No ciphertexts: what the numpy path returns.
    empties: list[list[bytes] | np.ndarray] = [[], np.zeros((0, lay.n), np.uint64)]
    for empty in empties:
        got = ns.signs(empty)
        want = masked.opener.signs([])
        assert got.shape == want.shape and got.dtype == want.dtype
        assert ns.values(empty).shape == masked.opener.values([]).shape
    for threads in (0, -1, True, 1.5, "2"):
        with pytest.raises(ParameterError):
            NativeSigns(masked.opener, threads=threads)  # type: ignore[arg-type]


@native_only
def test_the_c_call_refuses_bad_arguments(masked: Masked) -> None:
    ns = NativeSigns(masked.opener)
    ffi, lib = kernel_native.handles()
    n = masked.layout.n
    words = np.ascontiguousarray(np.frombuffer(b"".join(masked.blobs), "<u8").reshape(-1, n))
    out = np.zeros((len(words), n), np.uint8)

    def call(count: int, threads: int = 1, signs: bool = True) -> int:
        rc: int = lib.pprm_decide(ffi.from_buffer("uint64_t[]", words), count, ns._c,
                                  ffi.from_buffer("uint8_t[]", out) if signs else ffi.NULL, ffi.NULL, threads)
        return rc

    assert call(len(words)) == lib.PPRM_DECIDE_OK
    assert call(0) == lib.PPRM_DECIDE_EINVAL
    assert call(len(words), threads=-1) == lib.PPRM_DECIDE_EINVAL
    assert call(len(words), signs=False) == lib.PPRM_DECIDE_EINVAL  # nowhere to write
    c = ns._c
    for field, bad in (("h", 3), ("h", 0), ("h", 1 << 20), ("c0_bits", 0), ("c0_bits", 8), ("c1_bits", 40)):
        good = getattr(c, field)
        setattr(c, field, bad)
        try:
            assert call(1) == lib.PPRM_DECIDE_EINVAL, field
        finally:
            setattr(c, field, good)
    keep = c.pos
    c.pos = ffi.NULL
    try:
        assert call(1) == lib.PPRM_DECIDE_EINVAL
    finally:
        c.pos = keep


@native_only
def test_the_key_copy_is_wiped_on_close_and_never_shown(masked: Masked) -> None:
    ns = NativeSigns(masked.opener)
    assert "key" not in repr(ns).lower()
    assert ns._key_re.any()
    ns.close()
    assert not ns._key_re.any() and not ns._key_im.any()
    with pytest.raises(BackendError, match="closed"):
        ns.signs(masked.blobs)
    # The opener's own key spectrum is untouched.
    assert np.array_equal(NativeSigns(masked.opener).signs(masked.blobs), masked.opener.signs(masked.blobs))


# -- the decider -------------------------------------------------------------------

@pytest.fixture
def world(make_world: Callable[..., ScoredWorld]) -> ScoredWorld:
    return make_world(2500, 16, (0.4, 0.3), seed=9, params=INSECURE_SEALED_COMPLEX)


def test_the_decider_takes_the_c_path_exactly_on_the_native_backend(world: ScoredWorld) -> None:
    d = world.decider()
    assert d.native == (kernel.backend() == "native")


def test_both_paths_give_the_same_ids_in_gallery_order(world: ScoredWorld) -> None:
    d = world.decider()
    for probe, tau in zip(world.probes, (0.4, 0.3), strict=True):
        result = world.matcher().match(probe, tau)
        got = d.hits(result)
        # The numpy path, as the decider ran it before the C path existed.
        positive = d._opener.signs(result.ciphertexts)
        want: list[int] = []
        for b, blk in enumerate(world.gallery.index.blocks):
            slots = np.asarray(blk.slots, dtype=np.int64)
            want.extend(slots[positive[b] & (slots >= 0)].tolist())
        assert got == want and len(got) > 0
        if d.native:
            d._native, native = None, d._native
            try:
                assert d.hits(result) == got
            finally:
                d._native = native
        scores = world.scores(probe)
        margin = world.state.ctx.params.decision_margin
        assert all(scores[r] > tau - margin for r in got)


def test_the_numpy_backend_does_not_use_the_c_path(world: ScoredWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the C path was built on the numpy backend")

    monkeypatch.setattr(kernel, "backend", lambda: "numpy")
    monkeypatch.setattr(decide, "NativeSigns", refuse)
    d = world.decider()
    assert not d.native
    result = world.matcher().match(world.probes[0], 0.4)
    assert len(d.hits(result)) > 0
