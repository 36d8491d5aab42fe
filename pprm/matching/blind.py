"""Blind profile, responder side: masked threshold on an encrypted probe.

For each block of N/2 templates the responder turns the requester's
encrypted probe into one ciphertext of ``r_j * (s_j - tau) + e_j`` and sends
it back. In order (docs/DESIGN.md section 9):

1. the baby-step/giant-step product with the plaintext diagonals
   (:mod:`pprm.matching.diagonals`) at the top level, scale ``2**S``; slot
   ``j`` holds ``u_j * s_j`` with the database's secret sign ``u_j``;
2. subtract ``u_j * tau``, multiply by ``u_j * r_j`` with the mask ``r``
   (log-uniform, one per slot, from the CSPRNG), add the slot noise ``e``;
3. add a fresh encryption of zero under the requester's public key, so that
   ``c1`` is no longer a linear function of the gallery (circuit privacy);
4. add the flood polynomial, uniform on ``[-2**k, 2**k)`` per coefficient
   with ``2**k / sqrt(3) >= 2**30`` times the worst-case computation noise,
   to ``c0`` (:mod:`pprm.matching.flood`);
5. rescale down to the first prime: the answer is as small as the exact
   decisions allow.

The answer's blocks go out in a fresh random order per query; only the
responder can map (position, slot) back to a record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import encode_answer
from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients
from pprm.errors import ParameterError
from pprm.matching import kernel
from pprm.matching.diagonals import BlindDatabase, secret_permutation
from pprm.matching.flood import uniform_residues
from pprm.matching.mask import csprng_uniform

__all__ = ["AnnouncedKeys", "BlindAnswer", "BlindEvaluator", "BlindMatcher", "BlindRequest", "answer_scale"]

Progress = Callable[[int, int], None]


def answer_scale(ctx: BlindContext) -> float:
    """The scale SEAL leaves on an answer after rescaling to q0 (bit-exact, as SEAL computes it)."""
    scale = float(2**ctx.params.top_scale_bits)
    for q in reversed(ctx.moduli[1:]):
        scale /= float(q)
    return scale


@dataclass(frozen=True)
class BlindAnswer:
    """The responder's answer to one blind query.

    Attributes:
        ciphertexts: one packed answer block per database block, at q0, in
            ``order``.
        order: ``order[k]`` is the database block answer ``k`` was computed
            on (secret: it stays with the responder).
    """

    ciphertexts: list[bytes]
    order: list[int]


class AnnouncedKeys:
    """A requester's announced blind-profile keys: public material, as announced and as SEAL objects.

    A matcher in this process needs the SEAL objects; shards on a cluster
    need the bytes (each worker loads them itself). The objects are loaded
    at the first :meth:`load` and kept, so a key serving a burst of queries
    is parsed once.

    Args:
        key_id: the key id (checked against the material by whoever
            accepted the announcement).
        public: the announced public key (SEAL stream).
        galois: the announced Galois keys (SEAL stream).
        loaded: the same keys already loaded with
            :func:`pprm.crypto.blind_keys.load_announced`, if the caller has them.
    """

    def __init__(self, key_id: str, public: bytes, galois: bytes,
                 loaded: tuple[seal.PublicKey, seal.GaloisKeys] | None = None) -> None:
        self.key_id = key_id
        self.public = public
        self.galois = galois
        self._loaded = loaded
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AnnouncedKeys({self.key_id})"

    def load(self, ctx: BlindContext) -> tuple[seal.PublicKey, seal.GaloisKeys]:
        """The keys as SEAL objects for ``ctx`` (strictly loaded once, then cached).

        Args:
            ctx: the blind context of the announced parameter set.

        Returns:
            ``(public key, Galois keys)``.

        Raises:
            CiphertextError: the material does not load (see
                :func:`pprm.crypto.blind_keys.load_announced`).
        """
        with self._lock:
            if self._loaded is None:
                self._loaded = blind_keys.load_announced(ctx, self.public, self.galois)
            return self._loaded


@dataclass(frozen=True)
class BlindRequest:
    """One blind query as a matcher takes it: the probe, strictly parsed, and the requester's keys.

    Build it with :meth:`parse`, which checks the probe before any matching
    work starts (and before a blind database is built for it).

    Attributes:
        probe: the requester's probe ciphertext as received (SEAL stream);
            shards on a cluster parse it again from these bytes.
        ciphertext: the same probe parsed at the data level and scale
            ``2**probe_scale_bits``.
        keys: the requester's announced keys for this query.
    """

    probe: bytes = field(repr=False)
    ciphertext: seal.Ciphertext = field(repr=False)
    keys: AnnouncedKeys

    @classmethod
    def parse(cls, ctx: BlindContext, probe: bytes, keys: AnnouncedKeys) -> BlindRequest:
        """Parse the probe strictly and pair it with the keys.

        Args:
            ctx: the blind context of the responder's parameter set.
            probe: the probe ciphertext from the query body.
            keys: the requester's keys the probe is encrypted under.

        Returns:
            The request.

        Raises:
            CiphertextError: the probe is not a ciphertext of ``ctx`` at the
                data level and the probe scale.
        """
        ct = ctx.load_seeded_ciphertext(probe, scale=float(2**ctx.params.probe_scale_bits))
        return cls(probe, ct, keys)


def _mulmod(a: np.ndarray, b: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """``a * b mod q`` per prime row: ``a`` is ``[L, N]``, ``b`` is ``[S, L, N]``."""
    out = kernel.plain_mac(a[None, None], b[None], moduli)
    return out[0]


class BlindEvaluator:
    """The blind product, masks and hiding, for whatever blocks of diagonals it is handed.

    :class:`BlindMatcher` runs it over a whole database; a shard of a cluster
    (:mod:`pprm.cluster`) runs it over the blocks it holds.

    Args:
        ctx: the blind context of the diagonals' parameter set.
    """

    def __init__(self, ctx: BlindContext) -> None:
        self.ctx = ctx

    def __repr__(self) -> str:
        return f"BlindEvaluator({self.ctx.params.name})"

    def _baby_steps(self, probe: seal.Ciphertext, galois: seal.GaloisKeys) -> np.ndarray:
        p = self.ctx.params
        ev = self.ctx.evaluator
        out = np.empty((p.baby_steps, 2, p.data_primes, self.ctx.n), dtype=np.uint64)
        cur = probe
        out[0] = self.ctx.to_residues(cur)
        for b in range(1, p.baby_steps):
            nxt = seal.Ciphertext(self.ctx.seal)
            ev.rotate_vector(cur, 1, galois, nxt)
            out[b] = self.ctx.to_residues(nxt)
            cur = nxt
        return out

    def _giant_steps(self, inner: np.ndarray, galois: seal.GaloisKeys) -> np.ndarray:
        """Horner: ``acc = rot_b1(acc) + inner_g`` from the last giant step down."""
        p = self.ctx.params
        ev = self.ctx.evaluator
        scale = float(2**p.score_scale_bits)
        acc = self.ctx.from_residues(inner[-1], scale)
        for g in range(p.giant_steps - 2, -1, -1):
            ev.rotate_vector_inplace(acc, p.baby_steps, galois)
            ev.add_inplace(acc, self.ctx.from_residues(inner[g], scale))
        return self.ctx.to_residues(acc)

    def draw_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Fresh ``r`` (log-uniform in [1, 2**mask_log2_max]) and ``e`` for one block.

        ``|e| <= r*margin/8`` leaves ``7/8 * margin`` for the flood at r = 1
        (see :mod:`pprm.crypto.blind_params`). Empty slots get masks like any
        other, so the requester cannot tell them from templates scoring 0.
        """
        p = self.ctx.params
        r = np.exp2(csprng_uniform(p.slots) * p.mask_log2_max)
        e = (2.0 * csprng_uniform(p.slots) - 1.0) * r * (p.decision_margin / 8.0)
        return r, e

    def mask(self, score: np.ndarray, signs: np.ndarray, tau: float, r: np.ndarray,
             e: np.ndarray) -> np.ndarray:
        """``u*r * (score - u*tau) + e`` on residues at the top level, scale ``2**top_scale_bits``.

        Args:
            score: the block's product, holding ``u_j * s_j``.
            signs: the block's secret slot signs ``u``.
            tau: the threshold.
            r: masks, from :meth:`draw_masks`.
            e: slot noise, from :meth:`draw_masks`.

        Returns:
            ``uint64[2, L, N]`` residues of ``r * (s - tau) + e``.
        """
        p = self.ctx.params
        ctx = self.ctx
        moduli = ctx.moduli
        coeffs = np.stack([encode_coefficients(signs * r, p.mask_scale_bits, ctx.n),
                           encode_coefficients(e, p.top_scale_bits, ctx.n),
                           encode_coefficients(signs * tau, p.score_scale_bits, ctx.n)])
        ntt = ctx.to_ntt(coefficients_to_residues(coeffs, moduli))
        c = score.copy()
        c[0] = _sub(c[0], ntt[2], moduli)
        c = _mulmod(ntt[0], c, moduli)
        c[0] = _add(c[0], ntt[1], moduli)
        return c

    def hide(self, masked: np.ndarray, public_key: seal.PublicKey) -> bytes:
        """Re-randomise, flood, and rescale a masked block to q0.

        Args:
            masked: top-level residues from :meth:`mask`.
            public_key: the requester's public key.

        Returns:
            The packed answer block (:mod:`pprm.crypto.answer_codec`).
        """
        p = self.ctx.params
        ctx = self.ctx
        moduli = ctx.moduli
        flood = ctx.to_ntt(uniform_residues(p.flood_bits, ctx.n, moduli)[None])[0]
        zero = seal.Ciphertext(ctx.seal)
        seal.Encryptor(ctx.seal, public_key).encrypt_zero(zero)
        z = ctx.to_residues(zero)
        c = masked.copy()
        c[0] = _add(_add(c[0], z[0], moduli), flood, moduli)
        c[1] = _add(c[1], z[1], moduli)
        out = ctx.from_residues(c, float(2**p.top_scale_bits))
        for _ in range(p.data_primes - 1):
            ctx.evaluator.rescale_to_next_inplace(out)
        return encode_answer(ctx, out)

    def evaluate(self, probe: seal.Ciphertext, public_key: seal.PublicKey, galois: seal.GaloisKeys, tau: float,
                 blocks: Sequence[tuple[np.ndarray, np.ndarray]], progress: Progress | None = None) -> list[bytes]:
        """Answer blocks for ``(diagonals, signs)`` pairs, in the order given.

        Args:
            probe: the requester's ciphertext, already strictly parsed at the
                data level and scale ``2**probe_scale_bits``.
            public_key: the requester's public key (for the encryption of zero).
            galois: the requester's Galois keys for steps 1 and b1.
            tau: the threshold, in ``[2*margin, 1)`` so empty slots (score 0)
                are certain non-hits.
            blocks: per block, its diagonals ``uint64[g2, b1, L, N]`` and its
                secret slot signs.
            progress: called with ``(blocks done, total)``.

        Returns:
            One packed answer block per input block.

        Raises:
            ParameterError: tau out of range.

        Warning:
            The masks and the flood must be fresh per query and from the
            CSPRNG; they are drawn here and never stored.
        """
        p = self.ctx.params
        if not 2 * p.decision_margin <= tau < 1.0:
            raise ParameterError(f"threshold must be in [{2 * p.decision_margin}, 1), got {tau}")
        if not blocks:
            return []
        baby = self._baby_steps(probe, galois)
        out = []

        def mac(k: int) -> np.ndarray:
            return kernel.plain_mac(blocks[k][0], baby, self.ctx.moduli)

        # The kernel releases the GIL: the next block's multiply-accumulate runs
        # while this thread does the current block's rotations and masking in SEAL.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-blind-mac") as pool:
            pending = pool.submit(mac, 0)
            for k in range(len(blocks)):
                inner = pending.result()
                if k + 1 < len(blocks):
                    pending = pool.submit(mac, k + 1)
                score = self._giant_steps(inner, galois)
                r, e = self.draw_masks()
                out.append(self.hide(self.mask(score, blocks[k][1], tau, r, e), public_key))
                if progress is not None:
                    progress(k + 1, len(blocks))
        return out


class BlindMatcher(BlindEvaluator):
    """Evaluates blind queries against one database.

    Args:
        ctx: the blind context of the database's parameter set.
        database: the diagonals.

    Raises:
        ParameterError: the database belongs to another parameter set.
    """

    def __init__(self, ctx: BlindContext, database: BlindDatabase) -> None:
        if database.params_name != ctx.params.name:
            raise ParameterError("the blind database was built for another parameter set")
        super().__init__(ctx)
        self.db = database

    def __repr__(self) -> str:
        return f"BlindMatcher({self.ctx.params.name}, {self.db.size} templates)"

    def answer(self, probe: seal.Ciphertext, public_key: seal.PublicKey, galois: seal.GaloisKeys,
               tau: float) -> BlindAnswer:
        """Evaluate one blind query over the whole database (see :meth:`evaluate`).

        Returns:
            The answer, blocks in a fresh random order.

        Raises:
            ParameterError: tau out of range.

        Warning:
            The block order must be fresh per query and from the CSPRNG; it is
            drawn here and kept only in the returned answer.
        """
        return self._answer(probe, public_key, galois, tau, None)

    def answer_blind(self, request: BlindRequest, tau: float, progress: Progress | None = None) -> BlindAnswer:
        """Answer one parsed blind query (the :class:`~pprm.matching.protocols.BlindMatching` interface).

        Args:
            request: the parsed probe and the requester's keys.
            tau: the threshold.
            progress: called with ``(blocks done, total)``.

        Returns:
            The answer, blocks in a fresh random order.

        Raises:
            ParameterError: tau out of range.
            CiphertextError: the requester's keys do not load.

        Warning:
            As :meth:`answer`: the block order is fresh per query, from the CSPRNG.
        """
        public_key, galois = request.keys.load(self.ctx)
        return self._answer(request.ciphertext, public_key, galois, tau, progress)

    def _answer(self, probe: seal.Ciphertext, public_key: seal.PublicKey, galois: seal.GaloisKeys, tau: float,
                progress: Progress | None) -> BlindAnswer:
        order = [int(i) for i in secret_permutation(self.db.blocks)]
        out = self.evaluate(probe, public_key, galois, tau, [(self.db.diagonals[b], self.db.signs[b]) for b in order],
                            progress)
        return BlindAnswer(out, order)


def _add(a: np.ndarray, b: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    out = a + b
    for j, q in enumerate(moduli):
        row = out[..., j, :]
        out[..., j, :] = np.where(row >= np.uint64(q), row - np.uint64(q), row)
    return out


def _sub(a: np.ndarray, b: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    out = np.empty_like(a)
    for j, q in enumerate(moduli):
        out[..., j, :] = np.where(a[..., j, :] >= b[..., j, :], a[..., j, :] - b[..., j, :],
                                  a[..., j, :] + (np.uint64(q) - b[..., j, :]))
    return out
