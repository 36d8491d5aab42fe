"""Compact encoding of the sealed profile's masked answer, and its decryption to signs.

The matcher hands the key service one ciphertext per gallery block holding
``r*(s - tau) + e`` per template (``2*r*(s - tau) + e`` with complex
packing, A in the real and B in the imaginary part of each slot). SEAL's own
stream stores it as 2 x N coefficients of 8 bytes at q0. Only signs are
wanted, so the matcher sends it modulus-switched to powers of two, in
coefficient form, one 64-bit word per coefficient pair:

    word_k = c1''_k << c0_bits | c0''_k,
    ci''   = round(gain * 2**ci_bits * ci / q0) mod 2**ci_bits

8 bytes per coefficient pair, i.e. 8 bytes per template with complex packing
(N templates per block; 16 with real packing, N/2 per block), against 32 as
SEAL streams. The key service computes ``c0'' * 2**(c1_bits - c0_bits) +
c1'' * s mod 2**c1_bits``, which is ``gain * 2**c1_bits / q0`` times the
decryption at q0 plus the rounding error ``d0 * 2**(c1_bits - c0_bits) +
d1 * s`` (``|d| <= 1/2``), and reads the signs of its canonical embedding
with a float64 FFT (:class:`MaskedDecryptor`): no SEAL stream parser, no
SEAL decoder, all cores.

Rounding a public ciphertext is a deterministic function of it, so the
encoding reveals nothing the ciphertext did not. It must happen in
coefficient form: an error small in the NTT domain is not small here.

The error budget (:func:`masked_layout`, every figure for the production set
``pprm-sealed-n8192-complex-v1``, N = 8192, 2**-40 tails throughout):

* gain. The decryption's coefficients satisfy ``|m_k| <= Delta * mean_j |v_j|``
  (the mean of the slot magnitudes; the inverse embedding averages), and
  ``|v_j| <= K1 * rho_j + K0`` with ``rho_j = sqrt(r_A**2 + r_B**2)``. The
  matcher redraws a block's masks in the rare case their mean ``rho`` exceeds
  ``rho_cap = E[rho] + t`` (Bernstein, ``t`` for a 2**-40 redraw rate:
  79.5 + 9.3 = 88.8), so every coefficient of the scaled decryption fits
  under q0/2 with ``gain = 5`` where the parameter set's own headroom bound
  (r at 2**8 in every slot) would allow 1.
* noise. At slot j the rounding error has real and imaginary parts that are
  sums of independent uniform terms (strictly sub-Gaussian) with standard
  deviation ``sigma_j = sqrt(N/24) * sqrt(|s(zeta_j)|**2 +
  4**(c1_bits - c0_bits))``. The key service refuses a key with
  ``max_j |s(zeta_j)| > sqrt(2N/3 * (ln(N/2) + 40 ln 2)) = 443.7`` (a 2**-40
  event for a uniform ternary key), so ``sigma_j <= 9465`` output units with
  ``c1_bits = 36``, ``c0_bits = 28``; ``7.45 * sigma = 70,480`` (2**-40).
* signal. The smallest masked value that must decide correctly, at ``r = 1``
  and ``|s - tau| = margin = 1e-3``, with r's encoding error at its 2**-40
  bound (0.54), 10% of the margin left to the gallery's own noise and
  ``|e| <= r * margin / 4``: ``(2 - 0.54) * 0.9e-3 - 0.25e-3 = 1.066e-3``,
  which is ``5 * 2**36 * 2**48 / q0 * 1.066e-3 = 89,450`` output units.

``70,480 <= 89,450``: a decision with ``|s - tau| >= margin`` can flip only
if the rounding error, r's encoding error or the gallery noise passes its
2**-40 bound, so with probability below 3 * 2**-40 per slot and query (the
rounding error alone would need 9.45 sigma against the budget's smallest
value). The validation runs for every registered set when it is used, and a
set whose budget fails raises ParameterError.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.crypto.embedding import SlotTransform, slot_transform
from pprm.crypto.params import ParameterSet
from pprm.errors import BackendError, CiphertextError, ParameterError

__all__ = [
    "CIPHERTEXTS_PER_BLOCK",
    "MaskedLayout",
    "MaskedDecryptor",
    "masked_layout",
    "encode_masked",
    "unpack_masked",
    "refuse_transparent",
    "rebuild_ciphertext",
]

# The masked result of a block is one ciphertext: with complex packing the
# halves A and B share it, A in the real and B in the imaginary part of each
# slot (pprm.matching.sealed); ParameterSet.result_ciphertexts_per_block says the same.
CIPHERTEXTS_PER_BLOCK = 1
# One 64-bit word per coefficient pair: 8 bytes per template with complex
# packing, the target this encoding was built for.
WORD_BITS = 64
_WORD_BYTES = WORD_BITS // 8
# Every probabilistic bound below holds except with probability 2**-40.
TAIL_BITS = 40
_LAMBDA = TAIL_BITS * math.log(2.0)
# One-sided tail of a strictly sub-Gaussian sum (uniform rounding errors are):
# P(X > Z*sigma) <= exp(-Z**2 / 2) = 2**-40 gives Z = 7.45.
_Z = math.sqrt(2.0 * _LAMBDA)
# |s - tau| < 1 + tau < 2 for unit templates and tau in (0, 1); 0.1 more
# covers the template grid and probe quantisation (at most ||q||_1 * 2**-13,
# 0.03 even at d = 2**16) and the gallery's noise (about 1e-5).
_X_MAX = 2.1
# Real packing: the imaginary part of a slot is gallery noise only (about
# 1.2e-5 in score units); 0.01 bounds it with room to spare.
_IMAG_NOISE = 0.01
# Share of the decision margin left to the gallery's own noise (measured
# 1.2e-5 std per part at N=8192, 1.2% of the margin: 8 sigma fit in 10%).
_GALLERY_NOISE_SHARE = 0.1
# Float64 error of the key service's three FFTs, in output units (tested
# below 0.01 at N=8192 and c1_bits = 36 against exact integer products); one
# unit bounds it. That error grows like 2**c1_bits, so c1 keeps at most 38 bits.
_FFT_SLACK = 1.0
_C1_BITS_MAX = 38
# The rounding error moves a coefficient by at most N/2 + 2**(c1-c0-1) + 1
# output units; this relative slack keeps it under 2**(c1_bits-1) too.
_COEFF_SLACK = 2.0**-20
# The quadrature of E[rho] (midpoint rule, 1024 x 1024) is accurate to about
# 1e-7 relatively; 1e-4 is added on top.
_QUADRATURE = 1024
_QUADRATURE_SLACK = 1e-4
# The key service's FFTs run over this many blocks at once: 16 x 4096 complex
# values (1 MiB per array at N=8192) amortise numpy's overhead; measured at 1M
# (123 blocks, 2 cores): 16.4 ms against 19.6 with 8 and 20.2 with 62 per chunk.
_CHUNK_BLOCKS = 16


@dataclass(frozen=True)
class MaskedLayout:
    """How a masked ciphertext is packed, and the error budget that justifies it.

    Attributes:
        n: ring dimension N.
        q0: the data prime the masked ciphertext lives at.
        result_scale_bits: log2 of the masked value's scale (Delta).
        c1_bits: bits kept of c1 (the high part of each word).
        c0_bits: bits kept of c0 (the low part).
        gain: integer factor the decryption is scaled by before it is cut down.
        rho_cap: the matcher redraws a block's masks while the mean over
            slots of ``sqrt(sum of r**2)`` exceeds this.
        key_bound: the key service refuses a key whose embedding exceeds this
            in magnitude at any slot.
        noise_bound: the rounding error's 2**-40 bound in a slot part, output units.
        signal_min: the smallest masked value that must decide, output units.
    """

    n: int
    q0: int
    result_scale_bits: int
    c1_bits: int
    c0_bits: int
    gain: int
    rho_cap: float
    key_bound: float
    noise_bound: float
    signal_min: float

    @property
    def nbytes(self) -> int:
        """Bytes of one masked ciphertext on the wire."""
        return self.n * _WORD_BYTES

    @property
    def value_scale(self) -> float:
        """Output units per unit of masked value: ``gain * 2**c1_bits * Delta / q0``."""
        return self.gain * 2.0**self.c1_bits * 2.0**self.result_scale_bits / self.q0


def _mask_moments(log2_max: int, parts: int) -> tuple[float, float, float]:
    """Mean, variance and maximum of ``rho = sqrt(sum over parts of r**2)``.

    ``r`` is log-uniform on ``[1, 2**log2_max]``, independently per part, as
    :func:`pprm.matching.mask.draw_masks` draws it.
    """
    c = log2_max * math.log(2.0)
    top = 2.0**log2_max
    second = (top * top - 1.0) / (2.0 * c)  # E[r**2]
    if parts == 1:
        mean = (top - 1.0) / c
    else:
        a = (np.arange(_QUADRATURE) + 0.5) / _QUADRATURE
        r = np.exp2(log2_max * a)
        mean = float(np.sqrt(r[:, None] ** 2 + r[None, :] ** 2).mean()) * (1.0 + _QUADRATURE_SLACK)
    return mean, parts * second - mean * mean, top * math.sqrt(parts)


def _bernstein(n: int, var: float, spread: float) -> float:
    """Deviation ``t`` with ``P(mean of n draws > E + t) <= 2**-40`` (Bernstein's inequality)."""
    b = 2.0 * _LAMBDA * spread / 3.0
    return (b + math.sqrt(b * b + 8.0 * n * _LAMBDA * var)) / (2.0 * n)


@lru_cache(maxsize=16)
def masked_layout(params: ParameterSet, q0: int) -> MaskedLayout:
    """The packing of a parameter set's masked ciphertexts, checked against its error budget.

    Args:
        params: a sealed parameter set.
        q0: its data prime (``CkksContext.moduli[0]``).

    Returns:
        The layout.

    Raises:
        ParameterError: no split of the 64-bit word keeps every decision with
            ``|s - tau| >= decision_margin`` exact (the budget in the module
            docstring), or the masks leave no headroom for the encoding.
    """
    n = params.poly_modulus_degree
    slots = n // 2
    parts = params.score_gain  # complex packing: two halves, each masked apart
    margin = params.decision_margin
    delta = 2.0**params.result_scale_bits
    # r's encoding error in a slot: complex packing multiplies by two exactly
    # real plaintexts (r_A + r_B and r_A - r_B), each with a real error of
    # std sqrt(N/12) / 2**mask_scale_bits; real packing by one SEAL plaintext.
    eps = _Z * math.sqrt(parts * n / 12.0) / 2.0**params.mask_scale_bits
    if parts == 2:
        # |A| <= (2 r_A + eps) |x| + r_A margin / 4, the same for B; the
        # triangle inequality on (A, B) gives |v| <= K1 * rho + K0.
        k1 = 2.0 * _X_MAX + margin / 4.0
        k0 = math.sqrt(2.0) * eps * _X_MAX
    else:
        # |Re v| <= (r + eps) |x| + r margin / 4, |Im v| <= r * imag + eps |x|.
        k1 = _X_MAX + margin / 4.0 + _IMAG_NOISE
        k0 = 2.0 * eps * _X_MAX
    mean, var, top = _mask_moments(params.mask_log2_max, parts)
    rho_cap = mean + _bernstein(slots, var, top - mean)
    gain = math.floor(q0 / 2.0 * (1.0 - _COEFF_SLACK) / (delta * (k1 * rho_cap + k0)))
    if gain < 1:
        raise ParameterError(f"{params.name}: masked values leave no headroom under q0/2")
    v_min = (params.score_gain - eps) * margin * (1.0 - _GALLERY_NOISE_SHARE) - margin / 4.0
    if v_min <= 0:
        raise ParameterError(f"{params.name}: mask encoding error leaves no decision margin")
    # A uniform ternary key: |s(zeta_j)|**2 is exponential with mean 2N/3 per
    # slot, so max_j |s(zeta_j)|**2 <= 2N/3 * (ln(N/2) + 40 ln 2) but for 2**-40.
    key_bound = math.sqrt(2.0 * n / 3.0 * (math.log(slots) + _LAMBDA))
    best: MaskedLayout | None = None
    for c1_bits in range(WORD_BITS // 2, _C1_BITS_MAX + 1):
        c0_bits = WORD_BITS - c1_bits
        sigma = math.sqrt(n / 24.0) * math.hypot(key_bound, 2.0 ** (c1_bits - c0_bits))
        cand = MaskedLayout(n, q0, params.result_scale_bits, c1_bits, c0_bits, gain, rho_cap, key_bound,
                            _Z * sigma + _FFT_SLACK, 0.0)
        cand = replace(cand, signal_min=cand.value_scale * v_min)
        if best is None or cand.noise_bound / cand.signal_min < best.noise_bound / best.signal_min:
            best = cand
    if best is None or best.noise_bound > best.signal_min:
        raise ParameterError(f"{params.name}: a {WORD_BITS}-bit masked encoding cannot keep decisions exact")
    return best


def encode_masked(layout: MaskedLayout, coeffs: np.ndarray) -> bytes:
    """Pack a masked ciphertext given in coefficient form at q0.

    Args:
        layout: the parameter set's layout (:func:`masked_layout`).
        coeffs: ``uint64[2, N]``: c0 and c1 in coefficient form, in ``[0, q0)``.

    Returns:
        :attr:`MaskedLayout.nbytes` bytes.

    Raises:
        CiphertextError: wrong shape, or a residue outside ``[0, q0)``.
    """
    arr = np.asarray(coeffs)
    if arr.shape != (2, layout.n) or arr.dtype != np.uint64:
        raise CiphertextError(f"expected uint64[2, {layout.n}] coefficients, got {arr.dtype}{arr.shape}")
    if int(arr.max()) >= layout.q0:
        raise CiphertextError("masked ciphertext has a coefficient outside [0, q0)")
    f = layout.gain / layout.q0
    # float64 holds c / q0 to 2**-53 relatively: at most 2**-14 of an output
    # unit, on top of the rounding's 1/2.
    c0 = np.rint(arr[0].astype(np.float64) * (f * 2.0**layout.c0_bits)).astype(np.uint64)
    c1 = np.rint(arr[1].astype(np.float64) * (f * 2.0**layout.c1_bits)).astype(np.uint64)
    word = ((c1 & np.uint64((1 << layout.c1_bits) - 1)) << np.uint64(layout.c0_bits)) | (
        c0 & np.uint64((1 << layout.c0_bits) - 1))
    return word.astype("<u8").tobytes()


def unpack_masked(layout: MaskedLayout, blobs: Sequence[bytes], check_transparent: bool = True) -> np.ndarray:
    """Strictly read masked ciphertexts from outside.

    Args:
        layout: the parameter set's layout.
        blobs: one packed ciphertext per block.
        check_transparent: refuse transparent ciphertexts here (a pass over
            every word); False only for a caller that refuses them itself
            (:class:`pprm.matching.decide_native.NativeSigns`, in its C pass).

    Returns:
        ``uint64[len(blobs), N]`` words.

    Raises:
        CiphertextError: a blob that is not bytes, has the wrong length, or
            is transparent (c1 zero: it would decrypt without the key).
    """
    for i, blob in enumerate(blobs):
        if not isinstance(blob, bytes | bytearray):
            raise CiphertextError(f"masked ciphertext {i} is not bytes")
        if len(blob) != layout.nbytes:
            raise CiphertextError(f"masked ciphertext {i} is {len(blob)} bytes, expected {layout.nbytes}")
    raw = np.frombuffer(b"".join(blobs), dtype="<u8").reshape(len(blobs), layout.n)
    words = raw.astype(np.uint64, copy=False)
    if check_transparent:
        refuse_transparent(layout, words)
    return words


def refuse_transparent(layout: MaskedLayout, words: np.ndarray) -> None:
    """Refuse masked ciphertexts whose c1 is zero: they would decrypt without the key.

    Args:
        layout: the parameter set's layout.
        words: ``uint64[count, N]``, as :func:`unpack_masked` returns them.

    Raises:
        CiphertextError: naming the first transparent ciphertext.
    """
    transparent = ~(words >> np.uint64(layout.c0_bits)).any(axis=1)
    if transparent.any():
        raise CiphertextError(f"masked ciphertext {int(np.flatnonzero(transparent)[0])} is transparent")


def rebuild_ciphertext(ctx: CkksContext, blob: bytes) -> seal.Ciphertext:
    """A SEAL ciphertext at q0 (NTT form) that decrypts to the packed one's values.

    For inspection and tests: the key service itself never builds one.
    ``ci = round(ci'' * q0 / 2**ci_bits)`` is congruent to ``gain * ci``
    (plus the rounding), so the result encrypts ``gain * m`` and carries the
    scale ``gain * Delta``: SEAL's decoder then returns the masked values.

    Args:
        ctx: the sealed context.
        blob: one packed ciphertext.

    Returns:
        The ciphertext, scale ``gain * 2**result_scale_bits``.

    Raises:
        CiphertextError: as :func:`unpack_masked`.
    """
    lay = masked_layout(ctx.params, ctx.moduli[0])
    (word,) = unpack_masked(lay, [blob])
    q0 = lay.q0
    out = np.empty((2, 1, lay.n), dtype=np.uint64)
    for i, (bits, shift) in enumerate(((lay.c0_bits, 0), (lay.c1_bits, lay.c0_bits))):
        c = (word >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
        # c * q0 / 2**bits = c * (q0 >> bits) + c * (q0 mod 2**bits) / 2**bits, the
        # first part exact in uint64, the second below 2**bits in float64.
        whole = c * np.uint64(q0 >> bits)
        frac = np.rint(c.astype(np.float64) * ((q0 & ((1 << bits) - 1)) / 2.0**bits)).astype(np.uint64)
        val = whole + frac
        out[i, 0] = np.where(val >= np.uint64(q0), val - np.uint64(q0), val)
    ct = ctx.from_residues(out, float(lay.gain) * 2.0**lay.result_scale_bits, ntt=False)
    ctx.evaluator.transform_to_ntt_inplace(ct)
    return ct


class MaskedDecryptor:
    """Decrypts packed masked ciphertexts to slot signs with numpy, over several threads.

    It reads the secret key's canonical embedding once, through SEAL's own
    decryptor and decoder (decrypting the public ciphertext ``(0, 1)`` gives
    ``s``), and checks it is a ternary key within the layout's bound.

    Args:
        ctx: the sealed context.
        decryptor: SEAL's decryptor under the state's secret key.
        threads: worker threads (numpy's FFTs and array operations release
            the GIL).

    Raises:
        BackendError: SEAL's slot order or key format is not what pprm
            expects, or the key's embedding exceeds the layout's bound (a
            2**-40 event for a fresh key: rotate the key).
        ParameterError: the parameter set has no valid layout.

    Warning:
        The object holds the key's embedding in memory, as the decryptor
        holds the key: it is as secret as the key, is never serialised, and
        lives only in the key service.
    """

    def __init__(self, ctx: CkksContext, decryptor: seal.Decryptor, threads: int = 1) -> None:
        self.layout = masked_layout(ctx.params, ctx.moduli[0])
        self.packing = ctx.params.packing
        self.threads = max(1, int(threads))
        self._t = slot_transform(ctx.n)
        unit = np.zeros((2, 1, ctx.n), dtype=np.uint64)
        unit[1] = 1  # the constant polynomial 1 is all ones in NTT form
        pt = seal.Plaintext()
        decryptor.decrypt(ctx.from_residues(unit, 1.0), pt)
        s = self._t.coefficients(self._t.from_slots(ctx.decode_complex(pt)))
        ternary = np.rint(s)
        if float(np.abs(s - ternary).max()) > 1e-3 or float(np.abs(ternary).max()) > 1.0:
            raise BackendError("the secret key does not read as a ternary polynomial in SEAL's slot order")
        self._key = self._t.spectrum(ternary)
        if float(np.abs(self._key).max()) > self.layout.key_bound:
            raise BackendError("this CKKS key's embedding exceeds the masked encoding's bound; rotate the key")

    def __repr__(self) -> str:
        return f"MaskedDecryptor(N={self.layout.n}, threads={self.threads})"

    def _native_parts(self) -> tuple[MaskedLayout, str, SlotTransform, np.ndarray]:
        """What :class:`pprm.matching.decide_native.NativeSigns` computes the same decisions from.

        Returns:
            ``(layout, packing, transform, key)``: the key is the secret key's
            spectrum (``complex128[N/2]``), a read-only view of this object's own.

        Warning:
            The key spectrum is as secret as the key: the caller may copy it
            only into memory it wipes, and must never log or serialise it.
        """
        key = self._key.view()
        key.flags.writeable = False
        return self.layout, self.packing, self._t, key

    def _spectrum(self, words: np.ndarray) -> np.ndarray:
        """The decryptions' spectra, in output units (``value_scale`` per unit of value)."""
        lay = self.layout
        top = 2.0**lay.c1_bits
        # c1 fills the word's top bits, so an arithmetic shift of the word read
        # as int64 gives it centred in [-2**(c1_bits-1), 2**(c1_bits-1)): the
        # same residue mod 2**c1_bits, and a small product with s (exact in float64).
        c1 = (words.view(np.int64) >> np.int64(lay.c0_bits)).astype(np.float64)
        c0 = (words & np.uint64((1 << lay.c0_bits) - 1)).astype(np.float64)
        m = self._t.coefficients(self._t.spectrum(c1) * self._key)
        m += c0 * 2.0 ** (lay.c1_bits - lay.c0_bits)
        m -= np.rint(m / top) * top
        return self._t.spectrum(m)

    def _map(self, fn: Callable[[np.ndarray], np.ndarray], words: np.ndarray) -> list[np.ndarray]:
        chunks = [words[i:i + _CHUNK_BLOCKS] for i in range(0, len(words), _CHUNK_BLOCKS)]
        if self.threads == 1 or len(chunks) == 1:
            return [fn(c) for c in chunks]
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="pprm-decide") as pool:
            return list(pool.map(fn, chunks))

    def _signs(self, words: np.ndarray) -> np.ndarray:
        v = self._spectrum(words)
        t = self._t
        real = v.real[:, t.index] > 0.0
        if self.packing != "complex":
            return real
        imag = v.imag[:, t.index] * t.imag_sign > 0.0
        return np.concatenate([real, imag], axis=1)

    def signs(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Which positions of each block decrypt positive.

        Args:
            blobs: one packed ciphertext per block.

        Returns:
            ``bool[len(blobs), templates_per_block]`` in position order
            (complex packing: slot j's real part is position j, its imaginary
            part position N/2 + j; pprm.matching.gallery).

        Raises:
            CiphertextError: as :func:`unpack_masked`.
        """
        words = unpack_masked(self.layout, blobs)
        if not len(words):
            return np.zeros((0, self.layout.n if self.packing == "complex" else self.layout.n // 2), dtype=bool)
        return np.concatenate(self._map(self._signs, words))

    def values(self, blobs: Sequence[bytes]) -> np.ndarray:
        """The decrypted masked values, for tests and measurements (the key service uses :meth:`signs`).

        Args:
            blobs: one packed ciphertext per block.

        Returns:
            ``complex128[len(blobs), N/2]`` in slot order, in units of the
            masked value (``2*r*(s - tau) + e`` with complex packing).

        Raises:
            CiphertextError: as :func:`unpack_masked`.
        """
        words = unpack_masked(self.layout, blobs)
        parts = self._map(lambda w: self._t.to_slots(self._spectrum(w)), words) if len(words) else []
        if not parts:
            return np.zeros((0, self.layout.n // 2), dtype=np.complex128)
        return np.concatenate(parts) / self.layout.value_scale
