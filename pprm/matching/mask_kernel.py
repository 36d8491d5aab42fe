"""The native masking of one sealed block, and the tables it reads.

:meth:`pprm.matching.sealed.BlockScorer` masks each block's encrypted
scores (subtract tau, conjugate, multiply by the two mask polynomials,
leave the NTT domain, add the noise). Through SEAL's Python binding every
step that crosses into numpy goes through a file, which made masking cost
as much as the multiply-accumulate. :class:`NativeMasker` does the same
arithmetic in C (``native/pprm_mask.c``) on the residues the kernel already
produced, bit for bit SEAL's result (tests/matching/test_mask_kernel.py
compares the two on the same masks); the SEAL path stays as the numpy
backend's and as the reference.

The tables are SEAL 4.x's, rebuilt from their definitions: the NTT of prime
``q`` evaluates at the powers of the *minimal* primitive 2N-th root of unity
(``try_minimal_primitive_root``), stored in bit-reversed order; the
conjugation permutes NTT slots as ``GaloisTool::generate_table_ntt`` does for
the element 2N - 1. The conjugation key's residues are read from the
public Galois keys. Nothing here touches a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto import seal_stream
from pprm.crypto.context import CkksContext
from pprm.errors import BackendError, ParameterError
from pprm.matching import kernel_native

__all__ = ["NttTable", "NativeMasker", "NativeNtt", "conjugation_permutation", "fill_table", "galois_permutation",
           "ntt_table"]


def _bitrev(x: int, bits: int) -> int:
    return int(format(x, f"0{bits}b")[::-1], 2) if bits else 0


def _minimal_root(n: int, q: int) -> int:
    # SEAL's try_minimal_primitive_root(2N, q): the smallest primitive 2N-th
    # root, which does not depend on which primitive root the search finds.
    if (q - 1) % (2 * n):
        raise ParameterError(f"{q} is not 1 mod 2N: no negacyclic NTT of size {n}")
    for x in range(2, 1 << 20):
        g = pow(x, (q - 1) // (2 * n), q)
        if pow(g, n, q) == q - 1:
            break
    else:  # pragma: no cover - a prime q = 1 mod 2N always has one
        raise ParameterError(f"no primitive 2N-th root of unity mod {q}")
    g2, cur, best = g * g % q, g, g
    for _ in range(n):
        best = min(best, cur)
        cur = cur * g2 % q
    return best


@dataclass(frozen=True)
class NttTable:
    """One prime's NTT tables in SEAL's layout (arrays are read-only)."""

    q: int
    n: int
    roots: np.ndarray
    roots_shoup: np.ndarray
    inv_roots: np.ndarray
    inv_roots_shoup: np.ndarray
    inv_n: int
    inv_n_shoup: int


def _shoup(values: list[int], q: int) -> np.ndarray:
    out = np.array([(v << 64) // q for v in values], dtype=np.uint64)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def ntt_table(q: int, n: int) -> NttTable:
    """SEAL's negacyclic NTT tables for prime ``q`` and degree ``n``.

    Args:
        q: a prime below 2**61 with ``q = 1 mod 2n``.
        n: a power of two.

    Returns:
        The tables, cached per ``(q, n)``.

    Raises:
        ParameterError: ``q`` has no primitive 2n-th root of unity.
    """
    bits = n.bit_length() - 1
    psi = _minimal_root(n, q)
    psi_inv = pow(psi, -1, q)
    roots = [0] * n
    inv_roots = [0] * n
    roots[0] = inv_roots[0] = 1
    power, inv_power = psi, psi_inv
    for i in range(1, n):
        roots[_bitrev(i, bits)] = power
        inv_roots[_bitrev(i - 1, bits) + 1] = inv_power
        power = power * psi % q
        inv_power = inv_power * psi_inv % q
    inv_n = pow(n, -1, q)

    def frozen(values: list[int]) -> np.ndarray:
        arr = np.array(values, dtype=np.uint64)
        arr.setflags(write=False)
        return arr

    return NttTable(q, n, frozen(roots), _shoup(roots, q), frozen(inv_roots), _shoup(inv_roots, q), inv_n,
                    (inv_n << 64) // q)


def fill_table(ffi: Any, dst: Any, t: NttTable, keep: list[Any]) -> None:
    """Point a cffi ``pprm_ntt_table`` at ``t``'s arrays; the views go into ``keep``, which must outlive ``dst``."""
    dst.q, dst.n = t.q, t.n
    for name in ("roots", "roots_shoup", "inv_roots", "inv_roots_shoup"):
        view = ffi.from_buffer("uint64_t[]", getattr(t, name), require_writable=False)
        keep.append(view)
        setattr(dst, name, view)
    dst.inv_n, dst.inv_n_shoup = t.inv_n, t.inv_n_shoup


@lru_cache(maxsize=8)
def galois_permutation(n: int, elt: int) -> np.ndarray:
    """SEAL's NTT-slot permutation for Galois element ``elt`` (odd, below 2n): ``out[j] = in[perm[j]]``.

    ``GaloisTool::generate_table_ntt``: slot ``i`` takes the slot whose
    bit-reversed odd exponent ``elt`` maps onto ``i``'s.

    Raises:
        ParameterError: ``elt`` is not odd or not below ``2n``.
    """
    if elt % 2 == 0 or not 0 < elt < 2 * n:
        raise ParameterError(f"Galois element {elt} is not odd and below 2N")
    bits = n.bit_length() - 1
    perm = np.empty(n, dtype=np.uint32)
    for i in range(n, 2 * n):
        raw = (elt * _bitrev(i, bits + 1)) >> 1
        perm[i - n] = _bitrev(raw & (n - 1), bits)
    perm.setflags(write=False)
    return perm


def conjugation_permutation(n: int) -> np.ndarray:
    """SEAL's NTT-slot permutation for the Galois element 2n - 1: ``out[j] = in[perm[j]]``."""
    return galois_permutation(n, 2 * n - 1)


class NativeMasker:
    """Masks sealed blocks (complex packing) in C; public material only.

    Args:
        ctx: the state's CKKS context: one data prime and a special prime.
        conjugation_key: the public Galois keys holding element 2N - 1.

    Raises:
        BackendError: the native extension is not built.
        ParameterError: the context is not a complex-packing one (one data
            prime plus a special prime), or the key is not a conjugation key
            of this context.
    """

    def __init__(self, ctx: CkksContext, conjugation_key: seal.GaloisKeys) -> None:
        self._ffi, self._lib = kernel_native.handles()
        if ctx.params.packing != "complex" or len(ctx.moduli) != 1:
            raise ParameterError("native masking needs complex packing at one data prime")
        n = ctx.n
        q0 = int(ctx.moduli[0])
        key_primes = [m.value() for m in ctx.seal.key_context_data().parms().coeff_modulus()]
        if len(key_primes) != 2 or int(key_primes[0]) != q0:
            raise ParameterError("native masking needs exactly one data prime and one special prime")
        p = int(key_primes[1])
        elt = 2 * n - 1
        if not conjugation_key.has_key(elt):
            raise ParameterError("the Galois keys do not hold the conjugation element")
        meta, key = seal_stream.parse(ctx.save_bytes(conjugation_key.key(elt)[0]))
        if not meta.is_ntt_form or key.shape != (2, 2, n):
            raise ParameterError("the conjugation key is not a one-prime key in NTT form")
        self.n, self.q0, self.p = n, q0, p
        self._key = np.ascontiguousarray(key)
        self._key_shoup = np.empty_like(self._key)
        for comp in range(2):
            for j, q in enumerate((q0, p)):
                self._shoup_into(self._key[comp, j], self._key_shoup[comp, j], q)
        self._t0, self._tp = ntt_table(q0, n), ntt_table(p, n)
        self._perm = conjugation_permutation(n)
        ratio = (1 << 128) // q0
        p_inv = pow(p, -1, q0)
        self._c = self._ffi.new("pprm_mask_ctx *")
        self._keep: list[Any] = []  # the cffi views the struct points into must outlive it
        fill_table(self._ffi, self._c.q0, self._t0, self._keep)
        fill_table(self._ffi, self._c.p, self._tp, self._keep)
        self._c.q0_ratio = [ratio & (2**64 - 1), ratio >> 64]
        self._c.perm = self._view("uint32_t[]", self._perm)
        self._c.key = self._view("uint64_t[]", self._key)
        self._c.key_shoup = self._view("uint64_t[]", self._key_shoup)
        self._c.p_inv = p_inv
        self._c.p_inv_shoup = (p_inv << 64) // q0

    def __repr__(self) -> str:
        return f"NativeMasker(n={self.n})"

    def _view(self, ctype: str, arr: np.ndarray) -> Any:
        v = self._ffi.from_buffer(ctype, arr, require_writable=False)
        self._keep.append(v)
        return v

    def _shoup_into(self, w: np.ndarray, out: np.ndarray, q: int) -> None:
        rc = self._lib.pprm_shoup(self._ffi.from_buffer("uint64_t[]", w, require_writable=False),
                                  self._ffi.from_buffer("uint64_t[]", out, require_writable=True), w.size, q)
        if rc != self._lib.PPRM_MASK_OK:
            raise ParameterError("conjugation key residues are not reduced")

    def mask(self, ct: np.ndarray, tau: np.ndarray, mask_a: np.ndarray, mask_b: np.ndarray,
             noise: np.ndarray) -> np.ndarray:
        """``INTT((S - tau) * A + conj(S - tau) * B) + (noise, 0)`` for one block.

        Args:
            ct: ``uint64[2, N]``: the block's encrypted scores, NTT form at q0.
            tau: ``uint64[N]``: tau's plaintext, NTT form at q0.
            mask_a: ``int64[N]``: the integer polynomial of ``r_A + r_B``.
            mask_b: ``int64[N]``: the integer polynomial of ``r_A - r_B``.
            noise: ``uint64[N]``: the noise polynomial in ``[0, q0)``.

        Returns:
            ``uint64[2, N]``: the masked ciphertext in coefficient form at q0.

        Raises:
            BackendError: an input word is not reduced, or memory ran out.
        """
        ffi = self._ffi
        src = np.ascontiguousarray(ct, dtype=np.uint64)
        out = np.empty((2, self.n), dtype=np.uint64)
        rc = self._lib.pprm_mask_complex(
            ffi.from_buffer("uint64_t[]", src, require_writable=False),
            ffi.from_buffer("uint64_t[]", np.ascontiguousarray(tau, dtype=np.uint64), require_writable=False),
            ffi.from_buffer("int64_t[]", np.ascontiguousarray(mask_a, dtype=np.int64), require_writable=False),
            ffi.from_buffer("int64_t[]", np.ascontiguousarray(mask_b, dtype=np.int64), require_writable=False),
            ffi.from_buffer("uint64_t[]", np.ascontiguousarray(noise, dtype=np.uint64), require_writable=False),
            self._c,
            ffi.from_buffer("uint64_t[]", out, require_writable=True),
        )
        if rc != self._lib.PPRM_MASK_OK:
            reason = "out of memory" if rc == self._lib.PPRM_MASK_ENOMEM else "an input is not reduced"
            raise BackendError(f"native masking failed: {reason}")
        return out

    def mask_group(self, cts: np.ndarray, tau: np.ndarray, words: np.ndarray, occupied: np.ndarray,
                   drawer: Any, layout: Any) -> tuple[np.ndarray, np.ndarray]:
        """Draw, mask and pack a group of blocks in one C call on every core (``native/pprm_mask_group.c``).

        Args:
            cts: ``uint64[G, 2, N]``: the blocks' encrypted scores, NTT form at q0.
            tau: ``uint64[N]``: tau's plaintext, NTT form at q0.
            words: ``uint64[G, 2N]`` random words, each block's as
                :meth:`pprm.matching.mask_draw_native.NativeMaskDrawer.from_words` takes them.
            occupied: ``bool[G, N]``.
            drawer: the :class:`~pprm.matching.mask_draw_native.NativeMaskDrawer` of this set.
            layout: the set's :class:`~pprm.crypto.masked_codec.MaskedLayout`.

        Returns:
            ``(packed, redraw)``: ``uint64[G, N]`` the packed words of each
            block (as :func:`pprm.crypto.masked_codec.encode_masked` packs
            them), and ``bool[G]``, the blocks whose words gave masks over
            the cap, to be masked again with fresh words (their rows of
            ``packed`` are meaningless).

        Raises:
            BackendError: a shape the set does not fit, an input word not
                reduced, or memory ran out.
        """
        ffi = self._ffi
        g = cts.shape[0]
        src = np.ascontiguousarray(cts, dtype=np.uint64)
        w = np.ascontiguousarray(words, dtype=np.uint64)
        occ = np.ascontiguousarray(occupied, dtype=np.uint8)
        if src.shape != (g, 2, self.n) or w.shape != (g, 2 * self.n) or occ.shape != (g, self.n):
            raise BackendError(f"mask_group: expected [G, 2, {self.n}] scores, [G, {2 * self.n}] words and "
                               f"[G, {self.n}] occupancy")
        pk = ffi.new("pprm_pack_params *")
        f = layout.gain / layout.q0
        pk.scale0, pk.scale1 = f * 2.0**layout.c0_bits, f * 2.0**layout.c1_bits
        pk.c0_bits, pk.c1_bits = layout.c0_bits, layout.c1_bits
        out = np.empty((g, self.n), dtype=np.uint64)
        status = np.empty(g, dtype=np.intc)
        rc = self._lib.pprm_mask_group(
            g, ffi.from_buffer("uint64_t[]", src, require_writable=False),
            ffi.from_buffer("uint64_t[]", np.ascontiguousarray(tau, dtype=np.uint64), require_writable=False),
            ffi.from_buffer("uint64_t[]", w, require_writable=False),
            ffi.from_buffer("uint8_t[]", occ, require_writable=False), self._c, drawer.ctx, pk,
            ffi.from_buffer("uint64_t[]", out, require_writable=True),
            ffi.from_buffer("int[]", status, require_writable=True), 0)
        if rc != self._lib.PPRM_MASK_OK:
            reason = "out of memory" if rc == self._lib.PPRM_MASK_ENOMEM else "an input is not reduced"
            raise BackendError(f"native masking failed: {reason}")
        return out, status == self._lib.PPRM_GROUP_REDRAW

    def ntt(self, poly: np.ndarray, *, prime: int = 0, inverse: bool = False) -> np.ndarray:
        """SEAL's (inverse) NTT of one polynomial at q0 (``prime=0``) or P (``prime=1``), for tests.

        Raises:
            BackendError: a word is not reduced.
        """
        out = np.array(poly, dtype=np.uint64, copy=True)
        t = self._ffi.addressof(self._c, "q0" if prime == 0 else "p")
        rc = self._lib.pprm_ntt(self._ffi.from_buffer("uint64_t[]", out, require_writable=True), t, int(inverse))
        if rc != self._lib.PPRM_MASK_OK:
            raise BackendError("native NTT failed: an input is not reduced")
        return out


class NativeNtt:
    """SEAL's forward negacyclic NTT for every prime of a level, in C (no SEAL object, no stream).

    The blind database's diagonals are encoded once per rebuild and turned
    into NTT form; going through SEAL means serialising each batch into a
    ciphertext and back. This is the transform :class:`NativeMasker` uses,
    bit for bit SEAL's (``tests/matching/test_mask_kernel.py``), for any
    primes below 2**61. The C call releases the GIL, so encoding threads run
    it in parallel.

    Args:
        n: the ring dimension.
        moduli: the primes, in SEAL's order.

    Raises:
        BackendError: the native extension is not built.
        ParameterError: a prime has no primitive 2n-th root of unity, or is
            not below 2**61.
    """

    def __init__(self, n: int, moduli: tuple[int, ...]) -> None:
        self._ffi, self._lib = kernel_native.handles()
        if any(not 2 <= q < 2**61 for q in moduli):
            raise ParameterError("the native NTT takes primes below 2**61")
        self.n = n
        self.moduli = tuple(int(q) for q in moduli)
        self._keep: list[Any] = []
        self._tables = []
        for q in self.moduli:
            c = self._ffi.new("pprm_ntt_table *")
            fill_table(self._ffi, c, ntt_table(q, n), self._keep)
            self._tables.append(c)

    def __repr__(self) -> str:
        return f"NativeNtt(n={self.n}, primes={len(self.moduli)})"

    def forward(self, polys: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """NTT of coefficient-form residues, as :meth:`pprm.crypto.context.CkksContext.to_ntt` computes it.

        Args:
            polys: ``uint64[..., L, N]`` residues in ``[0, q_l)``, ``L`` the
                first primes of :attr:`moduli`.
            in_place: transform ``polys`` itself (it must then be a writable
                C-contiguous uint64 array) instead of a copy.

        Returns:
            The residues in NTT form: a new array, or ``polys`` itself.

        Raises:
            BackendError: a shape the primes do not fit, a word not reduced,
                or ``in_place`` on an array it cannot write.
        """
        if in_place:
            if polys.dtype != np.uint64 or not polys.flags.c_contiguous or not polys.flags.writeable:
                raise BackendError("an in-place NTT needs a writable C-contiguous uint64 array")
            out = polys
        else:
            out = np.array(polys, dtype=np.uint64, order="C", copy=True)
        if out.ndim < 2 or out.shape[-1] != self.n or out.shape[-2] > len(self.moduli):
            raise BackendError(f"expected [..., L <= {len(self.moduli)}, {self.n}] residues, got {list(out.shape)}")
        rows = out.reshape(-1, out.shape[-2], self.n)
        for poly in rows:
            for j in range(poly.shape[0]):
                rc = self._lib.pprm_ntt(self._ffi.from_buffer("uint64_t[]", poly[j], require_writable=True),
                                        self._tables[j], 0)
                if rc != self._lib.PPRM_MASK_OK:
                    raise BackendError("native NTT failed: a word is not reduced below its prime")
        return out
