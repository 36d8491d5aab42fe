"""plain_mac: plaintexts times ciphertexts, summed, exact against big integers, SEAL and across backends.

``out[g, s, l, n] = (sum_b pts[g, b, l, n] * cts[b, s, l, n]) mod q_l``. The
numpy path is checked against a Python-int reference and SEAL's own
``multiply_plain`` + ``add`` chain; the native kernel against the numpy path,
bit for bit, on many shapes, and its AVX-512 loop against its scalar one
(``kernel_native.plain_mac(..., scalar=True)``). Tests that need the native
kernel skip when it is not built or failed its self-check (``"native" not in
available_backends()``); those of the AVX-512 loop only when it does not run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto import seal_stream
from pprm.crypto.context import CkksContext
from pprm.errors import BackendError
from pprm.matching import kernel, kernel_native, kernel_numpy, kernel_selfcheck
from pprm.matching.mac_args import MAX_PLAIN_B, PLAIN_RANGE_ERROR

needs_native = pytest.mark.skipif(
    "native" not in kernel.available_backends(),
    reason="native kernel pprm._native_kernel is not built or failed its self-check",
)

# Real SEAL primes (60, 50, 40 and 30 bits), the largest prime below 2**60, and 2.
PRIMES_60 = tuple(m.value() for m in seal.CoeffModulus.Create(8192, [60, 60, 60, 60]))
PRIMES_SMALL = tuple(m.value() for m in seal.CoeffModulus.Create(8192, [50, 40, 30]))
Q_TOP = (1 << 60) - 93
PRIMES = (*PRIMES_60, *PRIMES_SMALL, Q_TOP, 2)


def reference(pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """``sum_b pts[g, b] * cts[b, s] mod q_l`` in Python integers (no overflow possible)."""
    g_count, b_count, nprimes, n = pts.shape
    size = cts.shape[1]
    p, c = pts.tolist(), cts.tolist()
    out = np.empty((g_count, size, nprimes, n), dtype=np.uint64)
    for g in range(g_count):
        for s in range(size):
            for j, q in enumerate(moduli):
                for i in range(n):
                    out[g, s, j, i] = sum(p[g][b][j][i] * c[b][s][j][i] for b in range(b_count)) % q
    return out


def random_case(
    rng: np.random.Generator, shape: tuple[int, int, int, int, int], moduli: tuple[int, ...], mode: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """Residues of shape ``pts[G, B, L, N]``, ``cts[B, S, L, N]``; mode "max" is q - 1 everywhere."""
    g, b, s, nl, n = shape
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, nl, 1)
    pts = rng.integers(0, 1 << 63, size=(g, b, nl, n), dtype=np.uint64) % q
    cts = rng.integers(0, 1 << 63, size=(b, s, nl, n), dtype=np.uint64) % q
    if mode == "max":
        pts[...] = q - np.uint64(1)
        cts[...] = q - np.uint64(1)
    elif mode == "mixed":
        for arr in (pts, cts):
            pick = rng.random(arr.shape)
            top = np.broadcast_to(q - np.uint64(1), arr.shape)
            arr[pick < 0.3] = top[pick < 0.3]
            arr[pick > 0.8] = 0
    return pts, cts


# -- numpy path against Python integers ---------------------------------------

@pytest.mark.parametrize(
    ("shape", "mode"),
    [
        ((2, 3, 2, 2, 5), "random"),
        ((1, 1, 2, 1, 3), "max"),
        ((2, 17, 3, 2, 2), "mixed"),  # crosses the 16-value chunk
        ((1, MAX_PLAIN_B, 1, 2, 2), "max"),  # the largest sum the contract allows, just under 2**128
        ((1, MAX_PLAIN_B, 2, 1, 3), "random"),
    ],
)
def test_numpy_path_matches_python_integers(shape: tuple[int, int, int, int, int], mode: str) -> None:
    moduli = (PRIMES_60[0], Q_TOP, PRIMES_SMALL[2])[: shape[3]]
    pts, cts = random_case(np.random.default_rng(sum(shape)), shape, moduli, mode)
    got = kernel_numpy.plain_mac(pts, cts, moduli)
    assert got.dtype == np.uint64 and got.shape == (shape[0], shape[2], shape[3], shape[4])
    np.testing.assert_array_equal(got, reference(pts, cts, moduli))


@settings(max_examples=40)
@given(
    g=st.integers(1, 3),
    b=st.integers(1, 40),
    s=st.integers(1, 3),
    moduli=st.lists(st.sampled_from(PRIMES), min_size=1, max_size=3).map(tuple),
    n=st.integers(1, 6),
    mode=st.sampled_from(["random", "max", "mixed"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_cases_match_python_integers(
    g: int, b: int, s: int, moduli: tuple[int, ...], n: int, mode: str, seed: int
) -> None:
    pts, cts = random_case(np.random.default_rng(seed), (g, b, s, len(moduli), n), moduli, mode)
    expected = reference(pts, cts, moduli)
    np.testing.assert_array_equal(kernel_numpy.plain_mac(pts, cts, moduli), expected)
    np.testing.assert_array_equal(kernel.plain_mac(pts, cts, moduli), expected)
    if "native" in kernel.available_backends():
        np.testing.assert_array_equal(kernel_native.plain_mac(pts, cts, moduli, threads=2), expected)


# -- native against numpy, bit for bit ----------------------------------------

SHAPES = [
    (1, 1, 2, 1, 1),
    (2, 1, 2, 2, 300),  # b = 1; n crosses a 256-coefficient tile
    (3, 3, 2, 1, 9),  # b below one 4-row step
    (2, 37, 2, 3, 513),  # a short last step; a 1-coefficient last tile
    (3, MAX_PLAIN_B, 2, 2, 37),
    (2, 64, 2, 4, 1024),  # the real geometry, smaller N
    (2, 6, 3, 2, 260),  # s = 3: the general loop
    (4, MAX_PLAIN_B, 1, 1, 16),
]


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["random", "max", "mixed"])
def test_native_matches_numpy(shape: tuple[int, int, int, int, int], mode: str) -> None:
    moduli = (PRIMES_60[0], Q_TOP, PRIMES_SMALL[1], 2)[: shape[3]]
    pts, cts = random_case(np.random.default_rng(len(SHAPES) * sum(shape)), shape, moduli, mode)
    expected = kernel_numpy.plain_mac(pts, cts, moduli)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(kernel_native.plain_mac(pts, cts, moduli, threads=threads), expected)


@needs_native
def test_self_check_passes() -> None:
    assert kernel_selfcheck.native_matches_numpy()
    assert kernel_selfcheck.native_matches_numpy(seed=3)


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3, 0, 64])
def test_threads_split_the_work_exactly(threads: int) -> None:
    # g * b * l * n = 4 * 64 * 2 * 4100 = 2.1M words: enough for four threads at one per 2**19
    # words, 34 work items of which the last two are 4 coefficients long. The output starts
    # poisoned (2**64 - 1 is never a residue) so that a coefficient no thread writes shows.
    moduli = (PRIMES_60[1], PRIMES_SMALL[0])
    pts, cts = random_case(np.random.default_rng(21), (4, 64, 2, 2, 4100), moduli)
    expected = kernel_numpy.plain_mac(pts, cts, moduli)
    np.testing.assert_array_equal(kernel_native.plain_mac(pts, cts, moduli, threads=threads), expected)
    ffi, lib = kernel_native._ffi, kernel_native._lib
    out = np.full(expected.shape, np.iinfo(np.uint64).max, dtype=np.uint64)
    rc = lib.pprm_mac_plain(
        ffi.from_buffer("uint64_t[]", pts),
        ffi.from_buffer("uint64_t[]", cts),
        ffi.from_buffer("uint64_t[]", np.asarray(moduli, dtype=np.uint64)),
        ffi.from_buffer("uint64_t[]", out),
        *pts.shape[:2],
        cts.shape[1],
        *pts.shape[2:],
        threads,
    )
    assert rc == lib.PPRM_OK
    np.testing.assert_array_equal(out, expected)


@needs_native
def test_concurrent_python_threads_agree() -> None:
    # Calls run with the GIL released; concurrent callers must not share state.
    moduli = (PRIMES_60[0], PRIMES_60[2])
    cases = [random_case(np.random.default_rng(s), (2, 20, 2, 2, 700), moduli) for s in range(3)]
    expected = [kernel_numpy.plain_mac(p, c, moduli) for p, c in cases]
    results: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        results[i] = [kernel_native.plain_mac(p, c, moduli, threads=2) for _ in range(3) for p, c in cases]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for i in range(3):
        for r, got in enumerate(results[i]):
            np.testing.assert_array_equal(got, expected[r % len(cases)])


# -- the AVX-512 loop against the scalar one, bit for bit ---------------------

# Not gated on the self-check (as needs_native is): a wrong AVX-512 loop must fail
# these tests, not turn them into skips along with the whole native backend.
needs_simd = pytest.mark.skipif(
    not kernel_native.plain_mac_simd(),
    reason="the native kernel is not built, or its AVX-512 loop does not run on this CPU",
)

# (G, B, S, L, N): the B that matter to the float64 sums (one row, a few, 64 and 65,
# one 128-row run and one row more, the largest), odd and even G and S, and N
# cutting the 64-column units and the 256-column tiles unevenly.
SIMD_SHAPES = [
    (1, 1, 1, 1, 1),
    (3, 1, 2, 2, 300),
    (2, 3, 3, 3, 77),
    (8, 64, 2, 3, 1024),  # the real geometry, smaller N
    (3, 65, 1, 2, 130),
    (2, 128, 2, 1, 72),
    (5, 129, 3, 2, 9),
    (2, 256, 2, 2, 513),
    (1, 256, 5, 1, 64),
]
# Primes of 30 to 60 bits, the largest below 2**60, and the smallest modulus.
SIMD_MODULI = (Q_TOP, PRIMES_60[0], PRIMES_SMALL[0], PRIMES_SMALL[1], PRIMES_SMALL[2], 2)


@needs_simd
@pytest.mark.parametrize("shape", SIMD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["random", "max", "mixed"])
def test_simd_matches_scalar(shape: tuple[int, int, int, int, int], mode: str) -> None:
    g, b, s, nl, n = shape
    rng = np.random.default_rng(sum(shape) + len(mode))
    # Prime row 0 is always Q_TOP: q - 1 = 2**60 - 94 has (nearly) all-ones limbs, the
    # largest float64 sums the kernel can meet ("max" mode at B = 256 is the worst case).
    others = rng.permutation(np.array(SIMD_MODULI[1:], dtype=np.uint64))
    moduli = (Q_TOP, *(int(q) for q in others[: nl - 1]))
    pts, cts = random_case(rng, shape, moduli, mode)
    expected = kernel_native.plain_mac(pts, cts, moduli, threads=1, scalar=True)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(kernel_native.plain_mac(pts, cts, moduli, threads=threads), expected)
    if g * b * s * nl * n <= 50_000:
        np.testing.assert_array_equal(expected, reference(pts, cts, moduli))


@needs_simd
@settings(max_examples=30, deadline=None)
@given(
    g=st.integers(1, 4),
    b=st.sampled_from([1, 2, 5, 63, 64, 65, 127, 128, 129, 255, 256]),
    s=st.integers(1, 4),
    moduli=st.lists(st.sampled_from(SIMD_MODULI), min_size=1, max_size=3).map(tuple),
    n=st.integers(1, 600),
    mode=st.sampled_from(["random", "max", "mixed"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_simd_matches_scalar_on_random_shapes(
    g: int, b: int, s: int, moduli: tuple[int, ...], n: int, mode: str, seed: int
) -> None:
    pts, cts = random_case(np.random.default_rng(seed), (g, b, s, len(moduli), n), moduli, mode)
    np.testing.assert_array_equal(
        kernel_native.plain_mac(pts, cts, moduli, threads=2),
        kernel_native.plain_mac(pts, cts, moduli, threads=1, scalar=True),
    )


@needs_simd
@pytest.mark.parametrize("where", ["pts", "cts"])
@pytest.mark.parametrize("column", [0, 70, 299])  # the first unit, a later one, the last (partial) vector
@pytest.mark.parametrize("value", ["q", "q + 1", "2**64 - 1"])
def test_simd_refuses_a_word_not_below_its_modulus(where: str, column: int, value: str) -> None:
    # Prime row 0 has the larger modulus: the word must be refused by its own row's modulus.
    moduli = (PRIMES_60[0], PRIMES_SMALL[2])
    pts, cts = random_case(np.random.default_rng(column), (3, 65, 3, 2, 300), moduli)
    arr = pts[2, 64] if where == "pts" else cts[64, 2]
    arr[1, column] = {"q": moduli[1], "q + 1": moduli[1] + 1, "2**64 - 1": 2**64 - 1}[value]
    for scalar in (False, True):
        for threads in (1, 2):
            with pytest.raises(BackendError, match=PLAIN_RANGE_ERROR):
                kernel_native.plain_mac(pts, cts, moduli, threads=threads, scalar=scalar)
    arr[1, column] = moduli[1] - 1
    np.testing.assert_array_equal(
        kernel_native.plain_mac(pts, cts, moduli, threads=2),
        kernel_native.plain_mac(pts, cts, moduli, scalar=True),
    )


# -- both backends --------------------------------------------------------------

PlainMac = Callable[[np.ndarray, np.ndarray, tuple[int, ...]], np.ndarray]


def _backends() -> list[PlainMac]:
    """The numpy path, the dispatching entry point, and the native kernel if it is usable."""
    out: list[PlainMac] = [kernel_numpy.plain_mac, kernel.plain_mac]
    if "native" in kernel.available_backends():
        out.append(kernel_native.plain_mac)
    return out


def test_read_only_memory_map(tmp_path: Path) -> None:
    moduli = (PRIMES_60[0], PRIMES_SMALL[0])
    pts, cts = random_case(np.random.default_rng(9), (2, 9, 2, 2, 300), moduli)
    path = tmp_path / "pts.npy"
    np.save(path, pts)
    mapped = np.load(path, mmap_mode="r")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    expected = reference(pts[:, :, :, :4].copy(), cts[:, :, :, :4].copy(), moduli)
    for mac in _backends():
        got = mac(mapped, cts, moduli)
        np.testing.assert_array_equal(got[:, :, :, :4], expected)
        np.testing.assert_array_equal(got, kernel_numpy.plain_mac(pts, cts, moduli))


def test_empty_sum_and_empty_output() -> None:
    q = (PRIMES_60[0],)
    for mac in _backends():
        got = mac(np.zeros((3, 0, 1, 8), np.uint64), np.zeros((0, 2, 1, 8), np.uint64), q)
        np.testing.assert_array_equal(got, np.zeros((3, 2, 1, 8), dtype=np.uint64))
        assert mac(np.zeros((0, 4, 1, 8), np.uint64), np.ones((4, 2, 1, 8), np.uint64), q).shape == (0, 2, 1, 8)
        assert mac(np.ones((2, 4, 1, 0), np.uint64), np.ones((4, 2, 1, 0), np.uint64), q).shape == (2, 2, 1, 0)


def test_dispatch_follows_backend() -> None:
    moduli = (PRIMES_60[0],)
    pts, cts = random_case(np.random.default_rng(4), (2, 5, 2, 1, 40), moduli)
    np.testing.assert_array_equal(kernel.plain_mac(pts, cts, moduli), reference(pts, cts, moduli))
    assert "plain_mac" in kernel.__all__ and "plain_mac" in kernel_native.__all__


# -- against SEAL's own evaluator ---------------------------------------------

def test_self_check_against_seal_accepts_both_kernels_and_catches_a_wrong_one() -> None:
    assert kernel_selfcheck.plain_mac_agrees_with_seal(kernel_numpy.plain_mac)
    if "native" in kernel.available_backends():
        assert kernel_selfcheck.plain_mac_agrees_with_seal(kernel_native.plain_mac)

    def off_by_one(pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
        out = kernel_numpy.plain_mac(pts, cts, moduli)
        out[1, 1, 0, 5] = (out[1, 1, 0, 5] + np.uint64(1)) % np.uint64(moduli[0])
        return out

    assert not kernel_selfcheck.plain_mac_agrees_with_seal(off_by_one)


def _seal_save(obj: seal.Ciphertext | seal.Plaintext, path: Path) -> bytes:
    obj.save(str(path))
    return path.read_bytes()


@pytest.mark.parametrize("size", [2, 3])
def test_matches_seal_multiply_plain_add_chain_on_three_primes(tmp_path: Path, size: int) -> None:
    """Both backends equal SEAL's ``multiply_plain``/``add`` chain on L = 3 primes of 60, 40, 40 bits.

    Built directly on sealapi (the parameter sets of pprm have one data
    prime). ``size = 3`` squares each ciphertext first (no relinearisation),
    so the sum runs over three polynomials. The plaintext residues come from
    :func:`kernel_selfcheck.plaintext_residues`; the ciphertext stream is parsed by
    :mod:`pprm.crypto.seal_stream`.
    """
    n = 1024
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, [60, 40, 40, 60]))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.NONE)
    data = context.first_context_data()
    moduli = tuple(m.value() for m in data.parms().coeff_modulus())
    assert len(moduli) == 3
    encoder, evaluator = seal.CKKSEncoder(context), seal.Evaluator(context)
    enc = seal.Encryptor(context, seal.KeyGenerator(context).secret_key())
    parms_id = context.first_parms_id()
    rng = np.random.default_rng(17)
    g_count, b_count = 3, 5

    def encode(scale_bits: int) -> seal.Plaintext:
        pt = seal.Plaintext()
        encoder.encode(rng.uniform(-1.0, 1.0, n // 2).tolist(), parms_id, float(2**scale_bits), pt)
        return pt

    cts = []
    for _ in range(b_count):
        ct = seal.Ciphertext(context)
        enc.encrypt_symmetric(encode(25), ct)
        if size == 3:
            evaluator.square_inplace(ct)
        cts.append(ct)
    pts = [[encode(20) for _ in range(b_count)] for _ in range(g_count)]

    def residues(ct: seal.Ciphertext) -> np.ndarray:
        meta, arr = seal_stream.parse(_seal_save(ct, tmp_path / "ct"))
        assert meta.is_ntt_form and meta.size == size and meta.coeff_modulus_size == 3
        return arr

    pts_res = np.stack([np.stack([kernel_selfcheck.plaintext_residues(pt, 3, n) for pt in row]) for row in pts])
    cts_res = np.stack([residues(ct) for ct in cts])
    expected = []
    for g in range(g_count):
        acc = seal.Ciphertext(context)
        evaluator.multiply_plain(cts[0], pts[g][0], acc)
        for b in range(1, b_count):
            prod = seal.Ciphertext(context)
            evaluator.multiply_plain(cts[b], pts[g][b], prod)
            evaluator.add_inplace(acc, prod)
        expected.append(residues(acc))
    for mac in _backends():
        np.testing.assert_array_equal(mac(pts_res, cts_res, moduli), np.stack(expected))


def test_plaintext_residues_match_the_stream_and_reject_bad_shapes(sealed_ctx: CkksContext) -> None:
    # The word-by-word copy against SEAL's own stream of the same plaintext (zstd members:
    # parms_id, coeff_count, scale, then a DynArray header, its count and the words).
    import zstandard

    pt = sealed_ctx.encode(np.linspace(-1, 1, 100), 20)
    blob = sealed_ctx.save_bytes(pt)
    body = zstandard.ZstdDecompressor().decompress(blob[16:], max_output_size=1 << 20)
    words = np.frombuffer(body, dtype="<u8", offset=4 * 8 + 8 + 8 + 16 + 8)
    np.testing.assert_array_equal(kernel_selfcheck.plaintext_residues(pt, 1, sealed_ctx.n),
                                  words.reshape(1, sealed_ctx.n))
    with pytest.raises(BackendError):
        kernel_selfcheck.plaintext_residues(pt, 2, sealed_ctx.n)


# -- rejections -----------------------------------------------------------------

Q0 = PRIMES_60[0]


def _ok(g: int = 2, b: int = 4, s: int = 2, nl: int = 1, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((g, b, nl, n), dtype=np.uint64), np.zeros((b, s, nl, n), dtype=np.uint64)


def _bad_inputs() -> list[tuple[str, object, object, object]]:
    pts, cts = _ok()
    pts2, cts2 = _ok(nl=2)
    big_p, big_c = _ok(b=MAX_PLAIN_B + 1, n=1)
    return [
        ("int64 pts", pts.astype(np.int64), cts, (Q0,)),
        ("float cts", pts, cts.astype(np.float64), (Q0,)),
        ("uint32 pts", pts.astype(np.uint32), cts, (Q0,)),
        ("big-endian cts", pts, cts.astype(">u8"), (Q0,)),
        ("list pts", pts.tolist(), cts, (Q0,)),
        ("3-d pts", pts[0], cts, (Q0,)),
        ("5-d cts", pts, cts[None], (Q0,)),
        ("B mismatch", pts, cts[:3], (Q0,)),
        ("L mismatch", pts, cts2, (Q0,)),
        ("N mismatch", pts, cts[..., :7], (Q0,)),
        ("too few moduli", pts2, cts2, (Q0,)),
        ("too many moduli", pts, cts, (Q0, Q0)),
        ("modulus 2**60", pts, cts, (1 << 60,)),
        ("modulus 1", pts, cts, (1,)),
        ("modulus 0", pts, cts, (0,)),
        ("negative modulus", pts, cts, (-Q0,)),
        ("float modulus", pts, cts, (float(Q0),)),
        ("bool modulus", pts, cts, (True,)),
        ("B = 257", big_p, big_c, (Q0,)),
        ("non-contiguous pts", np.zeros((2, 4, 1, 16), np.uint64)[..., ::2], cts, (Q0,)),
        ("non-contiguous cts", pts, np.zeros((4, 2, 2, 8), np.uint64)[:, :, :1], (Q0,)),
        ("Fortran-order pts", np.asfortranarray(np.zeros((2, 4, 1, 8), np.uint64)), cts, (Q0,)),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_arguments_raise_backend_error(case: tuple[str, object, object, object]) -> None:
    _, pts, cts, moduli = case
    with pytest.raises(BackendError, match="plain_mac"):
        kernel.plain_mac(pts, cts, moduli)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="plain_mac"):
        kernel_numpy.plain_mac(pts, cts, moduli)  # type: ignore[arg-type]
    if "native" in kernel.available_backends():
        with pytest.raises(BackendError, match="plain_mac"):
            kernel_native.plain_mac(pts, cts, moduli)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["pts", "cts"])
def test_residue_not_below_its_modulus_is_refused(where: str) -> None:
    # Row 0 has the larger modulus: a word valid there but >= q in row 1 must still be refused,
    # so the check is per prime row, not against the largest modulus.
    moduli = (PRIMES_60[0], PRIMES_SMALL[2])
    pts, cts = random_case(np.random.default_rng(2), (2, 9, 2, 2, 300), moduli)
    arr = pts[1, 8] if where == "pts" else cts[8, 1]
    arr[1, 299] = moduli[1]
    for mac in _backends():
        with pytest.raises(BackendError, match=PLAIN_RANGE_ERROR):
            mac(pts, cts, moduli)
    arr[1, 299] = moduli[1] - 1
    for mac in _backends():
        np.testing.assert_array_equal(mac(pts, cts, moduli), kernel_numpy.plain_mac(pts, cts, moduli))


@needs_native
def test_negative_threads_and_bad_env_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pts, cts = _ok()
    with pytest.raises(BackendError):
        kernel_native.plain_mac(pts, cts, (Q0,), threads=-1)
    monkeypatch.setenv("PPRM_THREADS", "many")
    with pytest.raises(BackendError):
        kernel_native.plain_mac(pts, cts, (Q0,))
    monkeypatch.setenv("PPRM_THREADS", "3")
    np.testing.assert_array_equal(kernel_native.plain_mac(pts, cts, (Q0,)), np.zeros((2, 2, 1, 8), np.uint64))


@needs_native
def test_c_entry_point_validates_its_own_arguments() -> None:
    # Defence in depth: the C function refuses what would make it inexact or divide by zero,
    # even when called without the Python wrapper's checks.
    ffi, lib = kernel_native._ffi, kernel_native._lib
    out = np.zeros(2 * 2 * 4, dtype=np.uint64)

    def call(pts: np.ndarray, cts: np.ndarray, q: int) -> int:
        g, b, nl, n = pts.shape
        return int(
            lib.pprm_mac_plain(
                ffi.from_buffer("uint64_t[]", pts),
                ffi.from_buffer("uint64_t[]", cts),
                ffi.from_buffer("uint64_t[]", np.array([q], dtype=np.uint64)),
                ffi.from_buffer("uint64_t[]", out),
                g, b, cts.shape[1], nl, n, 1,
            )
        )

    pts, cts = np.ones((2, 3, 1, 4), np.uint64), np.ones((3, 2, 1, 4), np.uint64)
    assert call(pts, cts, Q0) == lib.PPRM_OK
    np.testing.assert_array_equal(out, np.full(16, 3, dtype=np.uint64))
    for q in (0, 1, 1 << 60, (1 << 64) - 1):
        assert call(pts, cts, q) == lib.PPRM_EINVAL
    assert call(pts, cts, 2) == lib.PPRM_OK  # the smallest modulus: 1 * 1 * 3 = 1 mod 2
    np.testing.assert_array_equal(out, np.ones(16, dtype=np.uint64))
    assert call(pts * np.uint64(2), cts, 2) == lib.PPRM_EINVAL
    big = MAX_PLAIN_B + 1
    assert call(np.zeros((1, big, 1, 4), np.uint64), np.zeros((big, 2, 1, 4), np.uint64), Q0) == lib.PPRM_EINVAL
    bad = cts.copy()
    bad[2, 1, 0, 3] = Q0
    assert call(pts, bad, Q0) == lib.PPRM_EINVAL
    bad_p = pts.copy()
    bad_p[1, 2, 0, 3] = np.iinfo(np.uint64).max
    assert call(bad_p, cts, Q0) == lib.PPRM_EINVAL


def test_environment_backend_is_one_of_the_available() -> None:
    assert kernel.BACKEND in kernel.available_backends()
    wanted = os.environ.get("PPRM_BACKEND", "").strip().lower()
    if wanted:
        assert kernel.BACKEND == kernel.backend() == wanted
