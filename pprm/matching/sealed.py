"""Sealed profile, public side: encrypted, masked threshold scores.

:class:`SealedMatcher` holds the parameter set and the encrypted gallery,
never a secret key, so it cannot decrypt anything it computes (it has no
decryptor and the secret key file is never opened on this path).

Real packing: per block, ``S = sum_k w_k C_k`` holds ``s_j`` in slot ``j``,
and the result is one ciphertext ``r*(S - tau) + e``.

Complex packing (docs/DESIGN.md section 9): slot ``j`` of ``S`` holds
``s_A + i*s_B`` for the two templates of the slot. The matcher subtracts
``tau + i*tau`` first, so the mask's encoding error multiplies ``s - tau``
and cannot flip a sign; with ``z = S - tau(1 + i)`` it then computes, with
the public conjugation key, ``a*z + b*conj(z)`` for the real mask
plaintexts ``a = r_A + r_B`` and ``b = r_A - r_B``:
``(a + b)*Re(z) + i*(a - b)*Im(z) = 2*r_A*(s_A - tau) + 2i*r_B*(s_B - tau)``.
A decides in the real part, B in the imaginary part, each under its own
mask (drawn independently: no two templates share ``r`` or ``e``), and the
block's result is one ciphertext, half the bytes of one per half.

That separation is exact only if ``a`` and ``b`` are real in every slot
*exactly*: an imaginary encoding error ``eps`` in ``a`` would carry
``eps * (s_B - tau)`` into A's real part, up to 2**-9 * 2 against
``2 * r_A * margin = 2e-3`` at ``r_A = 1``. SEAL's float64 encoder rounds a
polynomial that is antisymmetric (real slots) only up to float error, so the
masks are first rounded here to integer polynomials with ``m_{N-k} = -m_k``
exactly (:meth:`pprm.crypto.embedding.SlotTransform.encode_real`), and SEAL
is handed those polynomials' own slot values, which it rounds back to the
same integers (its float error is below 1e-6 of a coefficient). The gallery's
noise in B stays in the imaginary part; the conjugation's key-switching noise
(about 1e-9 in score units) is all that crosses.

The result goes to the key service modulus-switched and packed, 8 bytes per
coefficient pair (:mod:`pprm.crypto.masked_codec`, with its error budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.crypto.embedding import slot_transform
from pprm.crypto.masked_codec import encode_masked, masked_layout
from pprm.errors import ParameterError
from pprm.matching import kernel, kernel_batch
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.mask import draw_block_masks
from pprm.matching.mask_draw_native import NativeMaskDrawer
from pprm.matching.mask_kernel import NativeMasker
from pprm.matching.templates import normalise_probe

__all__ = ["BlockScorer", "MaskedResult", "SealedMatcher", "quantise_probe"]

Progress = Callable[[int, int], None]

# Blocks the native path sends through the kernel before masking them
# together: 16 result ciphertexts (2 MiB a probe) held at a time, enough to
# keep every masking thread busy, few enough that memory does not grow with
# the gallery (4 and 64 measured no better at 1M).
_GROUP_BLOCKS = 16


def quantise_probe(probe: np.ndarray, probe_scale_bits: int) -> np.ndarray:
    """Integer weights ``round(q_k * 2**bits)`` of a unit-norm probe (int64)."""
    return np.rint(probe.astype(np.float64) * float(2**probe_scale_bits)).astype(np.int64)


@dataclass(frozen=True)
class MaskedResult:
    """Encrypted ``r*(s - tau) + e`` for every block, ready for the key service.

    Attributes:
        blocks: block files (versions) the result was computed on, in order.
        ciphertexts: one packed masked ciphertext per block, in block order
            (:func:`pprm.crypto.masked_codec.encode_masked`; with complex
            packing half A decides in the real and half B in the imaginary
            part of each slot).
        scale: the masked values' scale, ``2**result_scale_bits``; the key
            service refuses any other.
    """

    blocks: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]
    scale: float

    @property
    def nbytes(self) -> int:
        """Total bytes of :attr:`ciphertexts` (what the key service receives)."""
        return sum(len(c) for c in self.ciphertexts)

    def __repr__(self) -> str:
        return f"MaskedResult(blocks={len(self.blocks)})"


class BlockScorer:
    """The per-block work of the sealed matcher, independent of where the blocks live.

    :class:`SealedMatcher` runs it over a whole gallery; a shard of a cluster
    (:mod:`pprm.cluster`) runs it over the blocks it holds. Public material only.

    Args:
        ctx: the state's CKKS context (no keys).
        conjugation_key: public Galois keys for conjugation; required with
            complex packing, unused with real packing.

    Raises:
        ParameterError: complex packing without a conjugation key.
    """

    def __init__(self, ctx: CkksContext, conjugation_key: seal.GaloisKeys | None = None) -> None:
        self.ctx = ctx
        if ctx.params.packing == "complex" and conjugation_key is None:
            raise ParameterError(f"{ctx.params.name} packs two templates per slot and needs the conjugation key")
        self._conj_key = conjugation_key
        # The native backend masks in C on the kernel's residues; the SEAL
        # path below is the numpy backend's and the reference it is tested against.
        self._native = (NativeMasker(ctx, conjugation_key) if conjugation_key is not None
                        and ctx.params.packing == "complex" and kernel.backend() == "native" else None)
        # With it, the masks are drawn in C too, so that nothing of a block's
        # masking holds the GIL and blocks are masked on every core.
        self._drawer = (NativeMaskDrawer(ctx.params, ctx.moduli[0], masked_layout(ctx.params, ctx.moduli[0]).rho_cap)
                        if self._native is not None else None)

    def weights(self, probe: np.ndarray, threshold: float, dim: int) -> np.ndarray:
        """The probe's integer weights, after checking the probe and the threshold.

        Raises:
            TemplateError: the probe is malformed.
            ParameterError: the threshold is outside (0, 1).
        """
        if not 0.0 < threshold < 1.0:
            raise ParameterError("threshold must lie strictly between 0 and 1")
        return quantise_probe(normalise_probe(probe, dim), self.ctx.params.probe_scale_bits)

    def run(self, count: int, residues: Callable[[int], np.ndarray], occupancy: Callable[[int], np.ndarray],
            w: np.ndarray, threshold: float, progress: Progress | None = None) -> list[list[bytes]]:
        """Masked results of ``count`` blocks: ``residues(b)`` and ``occupancy(b)`` give block ``b``.

        Returns:
            Per block, its packed masked ciphertexts (one,
            :data:`pprm.crypto.masked_codec.CIPHERTEXTS_PER_BLOCK`).
        """
        out: list[list[bytes]] = [[] for _ in range(count)]
        if count == 0:
            return out
        tau, tau_ntt = self._tau(threshold)
        # The native batched kernel at one probe streams a block faster than
        # the single-probe one (float64 fused multiply-adds on 30-bit limbs
        # against 64x64-bit products); the numpy backend keeps its GEMV.
        many = kernel.backend() == "native"
        row = w.reshape(1, -1)

        def mac(b: int, into: np.ndarray | None = None) -> np.ndarray:
            if many:
                return kernel_batch.multiply_accumulate_many(residues(b), row, self.ctx.moduli, out=into)[0]
            return kernel.multiply_accumulate(residues(b), w, self.ctx.moduli)

        def finish(b: int, res: np.ndarray) -> None:
            out[b] = self._mask(res, tau, occupancy(b), tau_ntt)

        # Native: the kernel needs every core to stream a block at the memory's
        # pace, and masking beside it made the kernel's threads wait. So a
        # group of blocks goes through the kernel, then the group is masked in
        # one C call on every core. Through SEAL, masking costs as much as the
        # kernel: overlap the two.
        if self._native is None or self._drawer is None:
            self._blocks(count, mac, finish, progress)
            return out
        # One buffer for every group's scores: each group is masked before the next is computed.
        scores = np.empty((min(count, _GROUP_BLOCKS), 1, 2, self.ctx.params.data_primes, self.ctx.n), dtype=np.uint64)
        for group in self._groups(count):
            for i, b in enumerate(group):
                mac(b, scores[i])
            res = scores[:len(group), 0]
            for b, blob in zip(group, self._mask_group(res, [occupancy(b) for b in group], tau, tau_ntt),
                               strict=True):
                out[b] = [blob]
            if progress:
                progress(group.stop, count)
        return out

    def run_many(self, count: int, residues: Callable[[int], np.ndarray], occupancy: Callable[[int], np.ndarray],
                 ws: np.ndarray, threshold: float, progress: Progress | None = None) -> list[list[list[bytes]]]:
        """As :meth:`run` for several probes in one pass over the blocks.

        Each block is read once and multiplied by all the probes' weights
        together (:func:`pprm.matching.kernel_batch.multiply_accumulate_many`,
        exact); each probe then gets its own fresh masks, exactly as a single
        query would.

        Args:
            ws: ``int64[B, d]``, the probes' weights (:meth:`weights`).

        Returns:
            Per probe, per block, its packed masked ciphertexts.
        """
        out: list[list[list[bytes]]] = [[[] for _ in range(count)] for _ in range(ws.shape[0])]
        if count == 0 or ws.shape[0] == 0:
            return out
        tau, tau_ntt = self._tau(threshold)

        # Two result buffers taken in turn: block b's is masked while block
        # b + 1's is computed (_blocks), and b + 2 starts only after b is masked.
        shape = (ws.shape[0], 2, self.ctx.params.data_primes, self.ctx.n)
        buffers = (np.empty(shape, dtype=np.uint64), np.empty(shape, dtype=np.uint64))

        def mac(b: int) -> np.ndarray:
            return kernel_batch.multiply_accumulate_many(residues(b), ws, self.ctx.moduli, out=buffers[b % 2])

        def finish(b: int, res: np.ndarray) -> None:
            for i, blobs in enumerate(self._mask_many(res, tau, occupancy(b), tau_ntt)):
                out[i][b] = blobs

        if self._native is None or self._drawer is None:
            # A batch's masking costs more than its kernel: overlap them.
            self._blocks(count, mac, finish, progress)
            return out
        nb = ws.shape[0]
        occ_items = [np.stack([occupancy(b)] * nb) for b in range(count)]

        def finish_native(b: int, res: np.ndarray) -> None:
            for i, blob in enumerate(self._mask_group(res, occ_items[b], tau, tau_ntt)):
                out[i][b] = [blob]

        # A batch's kernel is compute-bound and its masking as well; masking
        # block b (one C call, every core) while the kernel runs on block b + 1
        # measured faster than taking them in turns.
        self._blocks(count, mac, finish_native, progress)
        return out

    def _tau(self, threshold: float) -> tuple[seal.Plaintext, np.ndarray | None]:
        """Tau's plaintext, and its NTT residues when the masking runs in C."""
        p = self.ctx.params
        # Complex packing subtracts tau from both parts of every slot at once.
        tau_value: float | complex = complex(threshold, threshold) if p.packing == "complex" else threshold
        tau = self.ctx.encode_constant(tau_value, p.gallery_scale_bits + p.probe_scale_bits)
        return tau, self._plaintext_residues(tau) if self._native is not None else None

    @staticmethod
    def _groups(count: int) -> list[range]:
        """The blocks ``0 .. count`` cut into runs of :data:`_GROUP_BLOCKS`."""
        return [range(g0, min(count, g0 + _GROUP_BLOCKS)) for g0 in range(0, count, _GROUP_BLOCKS)]

    def _mask_group(self, res: np.ndarray, occupied: np.ndarray | Sequence[np.ndarray], tau: seal.Plaintext,
                    tau_ntt: np.ndarray | None) -> list[bytes]:
        """The native path's :meth:`_mask` for a group of items (block, probe) at once.

        Args:
            res: ``uint64[G, 2, 1, N]``: each item's encrypted scores.
            occupied: each item's block occupancy (``bool[G, N]``, or G rows).

        Returns:
            Each item's packed masked ciphertext, in order.
        """
        if self._native is None or self._drawer is None or tau_ntt is None:  # pragma: no cover - callers check
            raise ParameterError("group masking needs the native masker")
        lay = masked_layout(self.ctx.params, self.ctx.moduli[0])
        occ = np.asarray(occupied)  # a batch passes its stacked rows: no copy
        packed, redraw = self._native.mask_group(res[:, :, 0, :], tau_ntt, self._drawer.fresh_words(res.shape[0]),
                                                 occ, self._drawer, lay)
        blobs = [row.astype("<u8").tobytes() for row in packed]
        # A draw over the cap (about 2**-40 a block) is discarded and the item
        # masked again alone, with fresh words.
        for k in np.flatnonzero(redraw):
            blobs[k] = self._mask(res[k], tau, occ[k], tau_ntt)[0]
        return blobs

    @staticmethod
    def _blocks(count: int, mac: Callable[[int], np.ndarray], finish: Callable[[int, np.ndarray], None],
                progress: Progress | None) -> None:
        """``finish(b, mac(b))`` for every block, in order, ``mac(b + 1)`` running meanwhile."""
        # The kernel releases the GIL: computing block b + 1 in a worker while
        # block b is masked overlaps the two.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-mac") as pool:
            pending = pool.submit(mac, 0)
            for b in range(count):
                res = pending.result()
                if b + 1 < count:
                    pending = pool.submit(mac, b + 1)
                finish(b, res)
                if progress:
                    progress(b + 1, count)

    def _plaintext_residues(self, pt: seal.Plaintext) -> np.ndarray:
        # SEAL's own NTT form of a plaintext, read as the difference it makes
        # to a ciphertext (the binding offers no direct view of its words).
        q0 = np.uint64(self.ctx.moduli[0])
        probe = np.random.default_rng().integers(0, int(q0), size=(2, 1, self.ctx.n), dtype=np.uint64)
        ct = self.ctx.from_residues(probe, 1.0)
        ct.scale = pt.scale
        self.ctx.evaluator.sub_plain_inplace(ct, pt)
        after = self.ctx.to_residues(ct)[0, 0]
        return np.asarray((probe[0, 0] + (q0 - after)) % q0, dtype=np.uint64)

    def _mask(self, residues: np.ndarray, tau: seal.Plaintext, occupied: np.ndarray,
              tau_ntt: np.ndarray | None = None) -> list[bytes]:
        """Turn the score ciphertext of one block into its packed masked result.

        Args:
            residues: the block's encrypted scores, ``uint64[2, 1, N]`` in NTT form.
            tau: the threshold's plaintext.
            occupied: which positions of the block hold a template.
            tau_ntt: the same plaintext's NTT residues, for the native path.

        Returns:
            ``[blob]``: ``r*(s - tau) + e`` per slot with real packing;
            ``2*r_A*(s_A - tau) + e_A + i*(2*r_B*(s_B - tau) + e_B)`` with
            complex packing.
        """
        p = self.ctx.params
        lay = masked_layout(p, self.ctx.moduli[0])
        if p.packing != "complex":
            return [encode_masked(lay, self._mask_real(residues, tau, occupied, lay.rho_cap))]
        exact, noise = self._complex_masks(occupied, lay.rho_cap)
        if self._native is not None and tau_ntt is not None:
            return [encode_masked(lay, self._native.mask(residues[:, 0, :], tau_ntt, exact[0], exact[1], noise))]
        return [encode_masked(lay, self._mask_complex_seal(residues, tau, exact, noise))]

    def _mask_many(self, residues: np.ndarray, tau: seal.Plaintext, occupied: np.ndarray,
                   tau_ntt: np.ndarray | None) -> list[list[bytes]]:
        """:meth:`_mask` for the B probes of one block, ``residues`` being ``uint64[B, 2, 1, N]``."""
        p = self.ctx.params
        if p.packing != "complex" or self._native is None or tau_ntt is None:
            return [self._mask(res, tau, occupied, tau_ntt) for res in residues]
        lay = masked_layout(p, self.ctx.moduli[0])
        exact, noise = self._complex_masks_many(occupied, lay.rho_cap, residues.shape[0])
        return [[encode_masked(lay, self._native.mask(res[:, 0, :], tau_ntt, ab[0], ab[1], nz))]
                for res, ab, nz in zip(residues, exact, noise, strict=True)]

    def _complex_masks(self, occupied: np.ndarray, rho_cap: float) -> tuple[np.ndarray, np.ndarray]:
        """Fresh masks of one block: the integer polynomials of ``a``, ``b``, and the noise's.

        Returns:
            ``(exact, noise)``: ``int64[2, N]`` polynomials of ``a = r_A + r_B``
            and ``b = r_A - r_B`` (exactly real in every slot), and
            ``uint64[N]`` the noise ``e_A + i*e_B`` at the result scale, mod q0.
        """
        exact, noise = self._complex_masks_many(occupied, rho_cap, 1)
        return exact[0], noise[0]

    def _complex_masks_many(self, occupied: np.ndarray, rho_cap: float,
                            count: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_complex_masks` for ``count`` probes of one block: ``int64[count, 2, N]``, ``uint64[count, N]``.

        Every probe's masks are drawn on their own (each its own CSPRNG
        draws and its own redraw test); only the encodings run together.
        """
        if self._drawer is not None:
            drawn = [self._drawer.draw(occupied) for _ in range(count)]
            return np.stack([x for x, _ in drawn]), np.stack([y for _, y in drawn])
        p = self.ctx.params
        t = slot_transform(self.ctx.n)
        h = p.slots
        r = np.empty((count, 2, h))
        e = np.empty((count, h), dtype=np.complex128)
        for i in range(count):
            # Independent draws per half: no two templates share r or e. Padding
            # positions get r = 1, e = -1: about -2*tau - 1, a certain non-hit.
            ma, mb = draw_block_masks([occupied[:h], occupied[h:]], p, rho_cap)
            r[i, 0], r[i, 1] = ma.r + mb.r, ma.r - mb.r
            e[i] = ma.e + 1j * mb.e
        exact = t.encode_real(r, p.mask_scale_bits)
        noise = t.encode_complex(e, p.result_scale_bits) % np.int64(self.ctx.moduli[0])
        return exact, noise.astype(np.uint64)

    def _mask_real(self, residues: np.ndarray, tau: seal.Plaintext, occupied: np.ndarray,
                   rho_cap: float) -> np.ndarray:
        p = self.ctx.params
        ev = self.ctx.evaluator
        q0 = self.ctx.moduli[0]
        ct = self.ctx.from_residues(residues, float(2 ** (p.gallery_scale_bits + p.probe_scale_bits)))
        ev.sub_plain_inplace(ct, tau)
        (masks,) = draw_block_masks([occupied], p, rho_cap)
        # Only real parts decide here, so SEAL's own (complex) encoding error is harmless.
        ev.multiply_plain_inplace(ct, self.ctx.encode(masks.r, p.mask_scale_bits))
        ev.transform_from_ntt_inplace(ct)
        coeffs = self.ctx.to_residues(ct)[:, 0, :]
        # e joins in coefficient form: adding a plaintext adds it to c0.
        noise = slot_transform(self.ctx.n).encode_complex(masks.e, p.result_scale_bits) % np.int64(q0)
        coeffs[0] = (coeffs[0] + noise.astype(np.uint64)) % np.uint64(q0)
        return coeffs

    def _mask_complex_seal(self, residues: np.ndarray, tau: seal.Plaintext, exact: np.ndarray,
                           noise: np.ndarray) -> np.ndarray:
        """The complex masking through SEAL's evaluator: the reference the native path must equal."""
        p = self.ctx.params
        ev = self.ctx.evaluator
        t = slot_transform(self.ctx.n)
        if self._conj_key is None:  # refused in __init__; kept for the type checker
            raise ParameterError("complex packing needs the conjugation key")
        ct = self.ctx.from_residues(residues, float(2 ** (p.gallery_scale_bits + p.probe_scale_bits)))
        ev.sub_plain_inplace(ct, tau)
        # The exact polynomials' slot values, which SEAL rounds back to them.
        values = t.to_slots(t.spectrum(exact.astype(np.float64))).real / float(2**p.mask_scale_bits)
        # b = 0 exactly when both halves carry the same mask in every slot
        # (a block of free positions only: r = 1 in both). SEAL refuses a
        # product that comes out transparent, and a*z alone is the same value.
        conj = self.ctx.conjugate(ct, self._conj_key) if exact[1].any() else None
        ev.multiply_plain_inplace(ct, self.ctx.encode(values[0], p.mask_scale_bits))
        if conj is not None:
            ev.multiply_plain_inplace(conj, self.ctx.encode(values[1], p.mask_scale_bits))
            ev.add_inplace(ct, conj)
        ev.transform_from_ntt_inplace(ct)
        coeffs = self.ctx.to_residues(ct)[:, 0, :]
        # e joins in coefficient form: adding a plaintext adds it to c0.
        q0 = np.uint64(self.ctx.moduli[0])
        coeffs[0] = (coeffs[0] + noise) % q0
        return coeffs


class SealedMatcher:
    """Computes masked encrypted threshold results over a sealed gallery.

    Args:
        ctx: the state's CKKS context (no keys).
        gallery: the encrypted gallery.
        conjugation_key: public Galois keys for conjugation (see
            :func:`pprm.crypto.keys.load_conjugation_key`); required with
            complex packing, unused with real packing.

    Raises:
        ParameterError: complex packing without a conjugation key.
    """

    def __init__(self, ctx: CkksContext, gallery: EncryptedGallery,
                 conjugation_key: seal.GaloisKeys | None = None) -> None:
        self.ctx = ctx
        self.gallery = gallery
        self.scorer = BlockScorer(ctx, conjugation_key)

    def match(self, probe: np.ndarray, threshold: float, progress: Progress | None = None) -> MaskedResult:
        """Score ``probe`` against every template, encrypted, then mask the threshold test.

        Args:
            probe: one template of the gallery's dimension (normalised here).
            threshold: tau in (0, 1).
            progress: called with ``(done, total)`` blocks.

        Returns:
            The masked result; slots with ``s >= tau + margin`` decrypt
            positive, slots with ``s <= tau - margin`` and free slots negative.

        Raises:
            TemplateError: the probe is malformed.
            ParameterError: the threshold is outside (0, 1).
        """
        w = self.scorer.weights(probe, threshold, self.gallery.dim)
        blocks = self.gallery.index.blocks
        per_block = self.scorer.run(len(blocks), self.gallery.block, lambda b: blocks[b].occupancy(), w, threshold,
                                    progress)
        return MaskedResult(tuple(b.file for b in blocks), tuple(ct for cts in per_block for ct in cts),
                            float(2**self.ctx.params.result_scale_bits))

    def match_many(self, probes: Sequence[np.ndarray], threshold: float,
                   progress: Progress | None = None) -> list[MaskedResult]:
        """:meth:`match` for several probes, in one pass over the gallery.

        Args:
            probes: templates of the gallery's dimension (each normalised here).
            threshold: tau in (0, 1), shared by the batch.
            progress: called with ``(done, total)`` blocks.

        Returns:
            One masked result per probe, in order, each as :meth:`match`
            would return it (its own masks, drawn afresh).

        Raises:
            TemplateError: a probe is malformed (nothing is computed).
            ParameterError: the threshold is outside (0, 1).
        """
        ws = np.stack([self.scorer.weights(p, threshold, self.gallery.dim) for p in probes]) if len(probes) \
            else np.zeros((0, self.gallery.dim), dtype=np.int64)
        blocks = self.gallery.index.blocks
        per_probe = self.scorer.run_many(len(blocks), self.gallery.block, lambda b: blocks[b].occupancy(), ws,
                                         threshold, progress)
        files = tuple(b.file for b in blocks)
        scale = float(2**self.ctx.params.result_scale_bits)
        return [MaskedResult(files, tuple(ct for cts in per_block for ct in cts), scale) for per_block in per_probe]
