"""Bit-for-bit checks that decide whether the native kernels may be used.

The native kernels (:mod:`pprm.matching.kernel_native`) are trusted only if
they reproduce, exactly, on small cases with edge values:

* the numpy kernels (:mod:`pprm.matching.kernel_numpy`), and
* SEAL's own ``multiply_plain`` + ``add`` chain, through the same TenSEAL
  build pprm encrypts with.

:func:`native_passes_self_check` runs all of them; the dispatcher
(:func:`pprm.matching.kernel.backend`) calls it once per process, on first
use. The SEAL comparisons take the callable under test as an argument, so
the numpy kernels are checked against SEAL by the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto import params as param_sets
from pprm.crypto.context import CkksContext
from pprm.errors import BackendError
from pprm.matching import kernel_native, kernel_numpy
from pprm.matching.mac_args import MAX_PLAIN_B, MAX_WEIGHT

__all__ = [
    "native_passes_self_check",
    "native_matches_numpy",
    "mac_agrees_with_seal",
    "plain_mac_agrees_with_seal",
    "plaintext_residues",
    "masking_agrees_with_seal",
    "native_many_matches_numpy",
]

MacFn = Callable[[np.ndarray, np.ndarray, tuple[int, ...]], np.ndarray]

# The smallest sealed set: the checks only need SEAL's arithmetic, not security.
_CHECK_PARAMS = "INSECURE-sealed-n1024"
# Its complex-packing twin, for the masking (conjugation through the special prime).
_CHECK_COMPLEX = "INSECURE-sealed-n1024-complex"


def native_passes_self_check() -> bool:
    """Whether the native kernels are built, load, and agree exactly with numpy and with SEAL.

    A few tens of milliseconds: a SEAL context at N=1024, one secret key, six
    encryptions, and the native and numpy kernels on small random cases.

    Returns:
        True if :func:`native_matches_numpy`, :func:`native_many_matches_numpy`,
        :func:`mac_agrees_with_seal`, :func:`plain_mac_agrees_with_seal` and
        :func:`masking_agrees_with_seal` all hold for the native kernels;
        False if any fails or the extension is not available.

    Raises:
        BackendError: ``PPRM_THREADS`` is set but invalid (the SEAL
            comparison of ``multiply_accumulate`` runs with the default
            thread count).
    """
    return (
        kernel_native.available()
        and native_matches_numpy()
        and native_many_matches_numpy()
        and mac_agrees_with_seal(kernel_native.multiply_accumulate)
        and plain_mac_agrees_with_seal(kernel_native.plain_mac)
        and masking_agrees_with_seal()
    )


def native_matches_numpy(seed: int = 0) -> bool:
    """Compare the native kernels with the numpy kernels, bit for bit, on small random cases.

    The multiply-accumulate case has extreme values (``q - 1`` residues,
    ``+-2**16`` weights), two ciphertext components, two primes, and a
    coefficient count that is not a multiple of the kernel's tile; the
    ``plain_mac`` cases are described in :func:`_plain_cases`. They are small
    enough (a few ms) to run before first use, so the native kernels do them
    on one thread; the threaded split only deals whole tiles out and is
    covered by the test suite.

    Args:
        seed: seed of the random cases.

    Returns:
        True if the extension is available and agrees exactly; False otherwise.
    """
    if not kernel_native.available():
        return False
    rng = np.random.default_rng(seed)
    moduli = (1152921504606830593, 1152921504606748673)
    d, size, n = 37, 2, 700
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, 2, 1)
    block = rng.integers(0, 1 << 62, size=(d, size, len(moduli), n), dtype=np.uint64) % q
    block[0] = q - np.uint64(1)
    weights = rng.integers(-MAX_WEIGHT, MAX_WEIGHT + 1, size=d, dtype=np.int64)
    weights[:2] = (MAX_WEIGHT, -MAX_WEIGHT)
    expected = kernel_numpy.multiply_accumulate(block, weights, moduli)
    try:
        if not np.array_equal(kernel_native.multiply_accumulate(block, weights, moduli, threads=1), expected):
            return False
        return all(
            np.array_equal(
                kernel_native.plain_mac(pts, cts, moduli, threads=1), kernel_numpy.plain_mac(pts, cts, moduli)
            )
            for pts, cts in _plain_cases(rng, moduli)
        )
    except BackendError:
        return False


def _plain_cases(rng: np.random.Generator, moduli: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Small ``plain_mac`` cases with edge values, for :func:`native_matches_numpy`.

    One per code path of the native kernel: s = 2 with b not a multiple of
    its 4-row step and n crossing a 256-coefficient tile, with zero and
    ``q - 1`` rows; b = 256 with every residue ``q - 1`` (the largest sum the
    contract allows, just under 2**128); b = 1 with s = 3.
    """
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, len(moduli), 1)

    def residues(shape: tuple[int, int, int, int]) -> np.ndarray:
        return rng.integers(0, 1 << 62, size=shape, dtype=np.uint64) % q

    nl = len(moduli)
    top = q - np.uint64(1)
    pts, cts = residues((2, 37, nl, 300)), residues((37, 2, nl, 300))
    pts[0, :5] = top[0]
    cts[:3] = top
    pts[1, 7] = 0
    cts[9] = 0
    return [
        (pts, cts),
        (
            np.ascontiguousarray(np.broadcast_to(top, (1, MAX_PLAIN_B, nl, 20))),
            np.ascontiguousarray(np.broadcast_to(top, (MAX_PLAIN_B, 2, nl, 20))),
        ),
        (residues((3, 1, nl, 9)), residues((1, 3, nl, 9))),
    ]


def mac_agrees_with_seal(mac: MacFn) -> bool:
    """Does ``mac`` (a ``multiply_accumulate``) reproduce SEAL's ``multiply_plain`` + ``add`` chain bit for bit?

    A weight encoded as a CKKS constant at scale 1 is the constant polynomial
    ``w``, so SEAL's chain computes exactly ``sum_k w_k C_k`` in NTT form.
    Three fresh symmetric encryptions, weights ``2**16``, ``-2**16`` and 12345.

    Args:
        mac: the kernel under test, called as ``mac(block, weights, moduli)``.

    Returns:
        True if its residues equal SEAL's.

    Raises:
        BackendError: whatever ``mac`` raises on these valid arguments.

    Warning:
        The context is the test-only ``INSECURE-sealed-n1024`` set: this
        checks arithmetic only. Its secret key is thrown away and the values
        it encrypts are random, so nothing here needs to stay secret.
    """
    ctx = CkksContext(param_sets.get(_CHECK_PARAMS, allow_insecure=True))
    enc = seal.Encryptor(ctx.seal, seal.KeyGenerator(ctx.seal).secret_key())
    weights = np.array([MAX_WEIGHT, -MAX_WEIGHT, 12345], dtype=np.int64)
    values = np.random.default_rng(5).uniform(-1.0, 1.0, (weights.size, ctx.slots))
    cts, acc = [], None
    for k, w in enumerate(weights):
        ct = seal.Ciphertext(ctx.seal)
        enc.encrypt_symmetric(ctx.encode(values[k], 24), ct)
        cts.append(ct)
        pt = seal.Plaintext()
        ctx.encoder.encode(float(w), ctx.parms_id, 1.0, pt)
        prod = seal.Ciphertext(ctx.seal)
        ctx.evaluator.multiply_plain(ct, pt, prod)
        if acc is None:
            acc = prod
        else:
            ctx.evaluator.add_inplace(acc, prod)
    block = np.stack([ctx.to_residues(ct) for ct in cts])
    return acc is not None and bool(np.array_equal(mac(block, weights, ctx.moduli), ctx.to_residues(acc)))


def plaintext_residues(pt: Any, primes: int, n: int) -> np.ndarray:
    """Copy an NTT-form SEAL plaintext's residues out as ``uint64[L, N]``.

    sealapi offers a plaintext's words one at a time (``Plaintext.data(i)``);
    SEAL keeps a CKKS plaintext in NTT form as L rows of N words, prime by
    prime, which is the layout ``plain_mac`` takes. Fine for checks; far
    too slow (one Python call per word) for real plaintexts.

    Args:
        pt: a ``tenseal.sealapi.Plaintext`` in NTT form at a level with ``primes`` primes.
        primes: L.
        n: the ring dimension N.

    Returns:
        A fresh ``uint64[primes, n]`` array.

    Raises:
        BackendError: the plaintext is not in NTT form or holds a different number of words.
    """
    if not pt.is_ntt_form() or pt.coeff_count() != primes * n:
        raise BackendError(f"plaintext is not an NTT-form plaintext of {primes} x {n} words")
    words = np.fromiter((pt.data(i) for i in range(primes * n)), dtype=np.uint64, count=primes * n)
    return words.reshape(primes, n)


def plain_mac_agrees_with_seal(mac: MacFn) -> bool:
    """Does ``mac`` (a ``plain_mac``) reproduce SEAL's ``multiply_plain`` + ``add`` chain bit for bit?

    Three ciphertexts (fresh, symmetric) and two rows of three plaintexts of
    random slot values; SEAL sums ``multiply_plain(C_b, P_gb)`` over b for
    each g, in NTT form, which is exactly what ``plain_mac`` computes.

    Args:
        mac: the kernel under test, called as ``mac(pts, cts, moduli)``.

    Returns:
        True if its residues equal SEAL's; False also if it raises
        :class:`~pprm.errors.BackendError` on these valid arguments.
    """
    ctx = CkksContext(param_sets.get(_CHECK_PARAMS, allow_insecure=True))
    enc = seal.Encryptor(ctx.seal, seal.KeyGenerator(ctx.seal).secret_key())
    rng = np.random.default_rng(6)
    g_count, b_count = 2, 3
    cts = []
    for _ in range(b_count):
        ct = seal.Ciphertext(ctx.seal)
        enc.encrypt_symmetric(ctx.encode(rng.uniform(-1.0, 1.0, ctx.slots), 24), ct)
        cts.append(ct)
    # Scale 2**24 * 2**20 stays below the 60-bit modulus, as multiply_plain requires.
    pts = [[ctx.encode(rng.uniform(-1.0, 1.0, ctx.slots), 20) for _ in range(b_count)] for _ in range(g_count)]
    nl = len(ctx.moduli)
    try:
        got = mac(
            np.stack([np.stack([plaintext_residues(pt, nl, ctx.n) for pt in row]) for row in pts]),
            np.stack([ctx.to_residues(ct) for ct in cts]),
            ctx.moduli,
        )
    except BackendError:
        return False  # e.g. a broken kernel that misreads valid residues as out of range
    for g in range(g_count):
        acc = seal.Ciphertext(ctx.seal)
        ctx.evaluator.multiply_plain(cts[0], pts[g][0], acc)
        for b in range(1, b_count):
            prod = seal.Ciphertext(ctx.seal)
            ctx.evaluator.multiply_plain(cts[b], pts[g][b], prod)
            ctx.evaluator.add_inplace(acc, prod)
        if not np.array_equal(got[g], ctx.to_residues(acc)):
            return False
    return True


def masking_agrees_with_seal(seed: int = 0) -> bool:
    """Whether the native masking of a block equals SEAL's evaluator, word for word.

    One random block at ``INSECURE-sealed-n1024-complex``: ``S - tau``, then
    ``(S - tau) * a + conj(S - tau) * b`` with SEAL's conjugation and
    products, out of the NTT domain, against
    :meth:`pprm.matching.mask_kernel.NativeMasker.mask` on the same words.

    Returns:
        True if the two agree; False if they differ or the native path
        refuses its inputs.
    """
    import os
    import tempfile

    from pprm.crypto.embedding import slot_transform
    from pprm.crypto.keys import conjugation_key_bytes, load_conjugation_key
    from pprm.matching.mask_kernel import NativeMasker

    ctx = CkksContext(param_sets.get(_CHECK_COMPLEX, allow_insecure=True))
    p = ctx.params
    n, q0 = ctx.n, ctx.moduli[0]
    rng = np.random.default_rng(seed)
    # SEAL hands out Galois keys only in serialisable form; they load back through a file.
    with tempfile.TemporaryDirectory(prefix="pprm-check-") as d:
        path = os.path.join(d, "galois.key")
        with open(path, "wb") as fh:
            fh.write(conjugation_key_bytes(ctx, seal.KeyGenerator(ctx.seal).secret_key()))
        gk = load_conjugation_key(ctx, path)
    res = rng.integers(0, q0, size=(2, 1, n), dtype=np.uint64)
    tau = ctx.encode_constant(complex(0.4, 0.4), p.gallery_scale_bits + p.probe_scale_bits)
    t = slot_transform(n)
    exact = t.encode_real(rng.uniform(1.0, 4.0, size=(2, p.slots)), p.mask_scale_bits)
    noise = rng.integers(0, q0, size=n, dtype=np.uint64)
    ev = ctx.evaluator
    ct = ctx.from_residues(res, float(2 ** (p.gallery_scale_bits + p.probe_scale_bits)))
    ev.sub_plain_inplace(ct, tau)
    conj = ctx.conjugate(ct, gk)
    values = t.to_slots(t.spectrum(exact.astype(np.float64))).real / float(2**p.mask_scale_bits)
    ev.multiply_plain_inplace(ct, ctx.encode(values[0], p.mask_scale_bits))
    ev.multiply_plain_inplace(conj, ctx.encode(values[1], p.mask_scale_bits))
    ev.add_inplace(ct, conj)
    ev.transform_from_ntt_inplace(ct)
    want = ctx.to_residues(ct)[:, 0, :]
    want[0] = (want[0] + noise) % np.uint64(q0)
    tau_ntt = plaintext_residues(tau, 1, n)[0]
    try:
        got = NativeMasker(ctx, gk).mask(res[:, 0, :], tau_ntt, exact[0], exact[1], noise)
    except BackendError:
        return False
    return bool(np.array_equal(got, want))


def native_many_matches_numpy(seed: int = 0) -> bool:
    """Compare the native batched kernel with the numpy single-probe kernel, bit for bit.

    ``kernel_native.multiply_accumulate_many`` must give, for every row of
    its weights, the words of ``kernel_numpy.multiply_accumulate`` (which is
    itself checked against SEAL by :func:`mac_agrees_with_seal`). One small
    case, a few ms: d = 129 rows (two of the native kernel's 64-row panels
    and one row more), 7 probes (not a multiple of its 6-probe micro-kernel),
    two ciphertext components and two primes, and 300 coefficients per row
    (1200 columns: not a multiple of its 128-column strips). The first
    row of weights is all ``+2**16``, the second alternates ``+-2**16``: with
    129 of them their absolute sums exceed the batched bound, so the first 128
    carry them and the last is 0, giving exactly ``2**23``, the largest sum the
    contract allows, against the ``q - 1`` residues of rows 0 to 3. One thread,
    as in :func:`native_matches_numpy`.

    Args:
        seed: seed of the random case.

    Returns:
        True if the extension is available and every row agrees exactly; False otherwise.
    """
    if not kernel_native.available():
        return False
    rng = np.random.default_rng(seed)
    moduli = (1152921504606830593, 1152921504606748673)
    d, size, n, nb = 129, 2, 300, 7
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, 2, 1)
    block = rng.integers(0, 1 << 62, size=(d, size, len(moduli), n), dtype=np.uint64) % q
    block[:4] = q - np.uint64(1)
    weights = rng.integers(-MAX_WEIGHT, MAX_WEIGHT + 1, size=(nb, d), dtype=np.int64) // 64
    weights[:2, -1] = 0
    weights[0, :-1] = MAX_WEIGHT
    weights[1, :-1] = np.where(np.arange(d - 1) % 2 == 0, MAX_WEIGHT, -MAX_WEIGHT)
    try:
        got = kernel_native.multiply_accumulate_many(block, weights, moduli, threads=1)
    except BackendError:
        return False
    return all(
        np.array_equal(got[b], kernel_numpy.multiply_accumulate(block, weights[b], moduli)) for b in range(nb)
    )
