"""Blind profile, responder side: masked threshold on an encrypted probe.

For each block of N/2 templates the responder turns the requester's
encrypted probe into one ciphertext of ``r_j * (s_j - tau * (1 + W_j) / 2 -
C_j) + e_j`` and sends it back, where ``W_j`` is the squared norm of the
probe window slot ``j`` sees and ``C_j >= 0`` the key check (about zero for
honest keys). Once per query (docs/DESIGN.md sections 4 and 9):

1. add the responder's own encryption of zero under the requester's public
   key: from here on the requester cannot know ``c1`` of anything its
   evaluation keys switch, so what a dishonest key adds is noise it cannot
   predict, not a value it chose;
2. project onto the real part, ``p' = (p + conj(p)) / 2``: an imaginary part
   of the probe no longer reaches the answer;
3. the b1 - 1 baby-step rotations of ``p'``;
4. the window norms, one level down: ``p'`` times ``2**norm_lift_bits``,
   rescaled, times its own conjugate (``|p'|**2``, which imaginary noise can
   only raise), relinearised, and summed over every slot's 512-window by
   b1 - 1 rotations by one and g2 - 1 by b1; and the key check ``C``, the
   square of the noise each evaluation key adds to a fresh encryption of
   zero (:meth:`BlindEvaluator._key_check`).

Then per block:

5. the baby-step/giant-step product with the plaintext diagonals
   (:mod:`pprm.matching.diagonals`) at the top level; slot ``j`` holds
   ``u_j * s_j`` with the database's secret sign ``u_j``;
6. subtract ``u_j * tau``, multiply by ``u_j * r_j`` with the mask ``r``
   (log-uniform, one per slot, from the CSPRNG), add the slot noise ``e``;
7. rescale one level, and add ``-r_j * (tau / 2 * (W_j - 1) + C_j)``. Since
   ``(1 + W) / 2 >= sqrt(W)``, a slot clears the threshold only if the unit
   probe ``v / |v|`` of its window ``v`` scores at least ``tau * (1 + |v|**2)
   / (2 |v|) >= tau``: whatever real probe the requester sends, every slot
   answers for a unit probe at a threshold no lower than ``tau``, and an
   honest probe (unit norm, encoded exactly) at ``tau`` itself;
8. add a fresh encryption of zero under the requester's public key, so that
   ``c1`` is no longer a function of the gallery (circuit privacy);
9. add the flood polynomial, uniform per coefficient and ``2**30`` times the
   worst-case computation noise (:mod:`pprm.matching.flood`), to ``c0``;
10. rescale down to the first prime: the answer is as small as the exact
    decisions allow.

The answer's blocks go out in a fresh random order per query; only the
responder can map (position, slot) back to a record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import encode_answer
from pprm.crypto.blind_keys import EvaluationKeys
from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients
from pprm.errors import CiphertextError, ParameterError
from pprm.matching import kernel
from pprm.matching.diagonals import BlindDatabase, secret_permutation
from pprm.matching.encode_native import native_transforms
from pprm.matching.flood import uniform_residues
from pprm.matching.galois_native import NativeGalois, native_galois
from pprm.matching.kernel_numpy import mulmod_pow2
from pprm.matching.mask import csprng_uniform

__all__ = ["AnnouncedKeys", "BlindAnswer", "BlindEvaluator", "BlindMatcher", "BlindRequest", "PreparedProbe",
           "SlotMasks", "answer_scale"]

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
        public: the announced public key (seed and ``b``).
        galois: the announced Galois keys (SEAL stream).
        relin: the announced relinearisation key (SEAL stream).
        loaded: the same keys already loaded with
            :func:`pprm.crypto.blind_keys.load_announced`, if the caller has them.
    """

    def __init__(self, key_id: str, public: bytes, galois: bytes, relin: bytes,
                 loaded: EvaluationKeys | None = None) -> None:
        self.key_id = key_id
        self.public = public
        self.galois = galois
        self.relin = relin
        self._loaded = loaded
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AnnouncedKeys({self.key_id})"

    def load(self, ctx: BlindContext) -> EvaluationKeys:
        """The keys as SEAL objects for ``ctx`` (strictly loaded once, then cached).

        Args:
            ctx: the blind context of the announced parameter set.

        Returns:
            The evaluation keys.

        Raises:
            CiphertextError: the material does not load (see
                :func:`pprm.crypto.blind_keys.load_announced`).
        """
        with self._lock:
            if self._loaded is None:
                self._loaded = blind_keys.load_announced(ctx, self.public, self.galois, self.relin)
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


@dataclass(frozen=True)
class PreparedProbe:
    """What one query computes once and every block shares.

    Attributes:
        baby: ``uint64[b1, 2, L, N]``: the projected probe rotated by ``0..b1-1``.
        norm_gap: ``uint64[2, L - 1, N]``: ``W - 1`` one level down, at
            scale :attr:`norm_scale`, or None when the checks are off.
        norm_scale: the exact scale of ``norm_gap``.
        key_check: ``uint64[2, L - 1, N]``: the evaluation keys' check term
            (a non-negative value per slot, near zero for honest keys), at
            scale ``combine scale / 2**key_check_factor_bits``; None when the
            checks are off.
    """

    baby: np.ndarray = field(repr=False)
    norm_gap: np.ndarray | None = field(repr=False)
    norm_scale: float = 0.0
    key_check: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SlotMasks:
    """One block's fresh per-slot secrets: mask ``r`` and slot noise ``e``."""

    r: np.ndarray = field(repr=False)
    e: np.ndarray = field(repr=False)


def _mulmod(a: np.ndarray, b: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """``a * b mod q`` per prime row: ``a`` is ``[L, N]``, ``b`` is ``[S, L, N]``."""
    out = kernel.plain_mac(a[None, None], b[None], moduli)
    return out[0]


@contextlib.contextmanager
def _seal_errors() -> Iterator[None]:
    """SEAL's own refusals (a transparent or malformed intermediate) as a typed error."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        raise CiphertextError(
            f"the requester's keys or probe gave a degenerate ciphertext: {str(exc).splitlines()[0][:100]}") from None


class BlindEvaluator:
    """The blind product, checks, masks and hiding, for whatever blocks of diagonals it is handed.

    :class:`BlindMatcher` runs it over a whole database; a shard of a cluster
    (:mod:`pprm.cluster`) runs it over the blocks it holds.

    Args:
        ctx: the blind context of the diagonals' parameter set.
        checks: the probe's re-randomisation, real projection, window norms
            and key check (steps 1, 2, 4 and 7 of the module docstring).

    Warning:
        ``checks=False`` exists only so that ``pprm bench`` can report what
        the checks cost; an evaluator without them answers a malicious
        requester with the gallery (docs/DESIGN.md section 4). Nothing in the
        protocol, node or CLI builds one.
    """

    def __init__(self, ctx: BlindContext, *, checks: bool = True) -> None:
        self.ctx = ctx
        self.checks = checks

    def __repr__(self) -> str:
        return f"BlindEvaluator({self.ctx.params.name})"

    def encrypt_zero(self, public_key: seal.PublicKey, scale: float = 1.0) -> seal.Ciphertext:
        """A fresh encryption of zero under the requester's public key, at the data level, labelled ``scale``."""
        zero = seal.Ciphertext(self.ctx.seal)
        seal.Encryptor(self.ctx.seal, public_key).encrypt_zero(zero)
        zero.scale = scale
        return zero

    def prepare(self, probe: seal.Ciphertext, keys: EvaluationKeys) -> PreparedProbe:
        """Re-randomise and project the probe, rotate it, and compute its window norms (once per query).

        Args:
            probe: the requester's ciphertext, strictly parsed at the data
                level and scale ``2**probe_scale_bits``.
            keys: the requester's evaluation keys.

        Returns:
            The baby steps and ``W - 1``.

        Raises:
            CiphertextError: SEAL refuses an intermediate (degenerate keys).
        """
        p = self.ctx.params
        ctx = self.ctx
        ev = ctx.evaluator
        with _seal_errors():
            ct = seal.Ciphertext(ctx.seal)
            if self.checks:
                ev.add(probe, self.encrypt_zero(keys.public, probe.scale), ct)
                ev.add_inplace(ct, ctx.conjugate(ct, keys.galois))
            else:
                ev.add(probe, probe, ct)
            gal = native_galois(ctx, keys.galois)
            if gal is not None:
                return self._prepare_native(ctx.to_residues(ct), keys, gal)
            baby = np.empty((p.baby_steps, 2, p.data_primes, ctx.n), dtype=np.uint64)
            baby[0] = ctx.to_residues(ct)
            cur = ct
            for b in range(1, p.baby_steps):
                nxt = seal.Ciphertext(ctx.seal)
                ev.rotate_vector(cur, 1, keys.galois, nxt)
                baby[b] = ctx.to_residues(nxt)
                cur = nxt
            if not self.checks:
                return PreparedProbe(baby, None)
            return self._window_norms(baby[0], keys, baby)

    def _prepare_native(self, projected: np.ndarray, keys: EvaluationKeys, gal: NativeGalois) -> PreparedProbe:
        """:meth:`prepare` after the projection, with the rotations in C (caller maps SEAL errors).

        The baby steps and the window norms are two independent chains of
        rotations; the C automorphisms release the interpreter, so the baby
        steps run in a worker while this thread computes the norms.
        """
        p = self.ctx.params

        def baby_steps() -> np.ndarray:
            baby = np.empty((p.baby_steps, 2, p.data_primes, self.ctx.n), dtype=np.uint64)
            baby[0] = projected
            for b in range(1, p.baby_steps):
                baby[b] = gal.rotate(baby[b - 1], 1)
            return baby

        if not self.checks:
            return PreparedProbe(baby_steps(), None)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-blind-baby") as pool:
            pending = pool.submit(baby_steps)
            norms = self._window_norms(projected, keys, None, gal)
            return dataclasses.replace(norms, baby=pending.result())

    def _window_norms(self, projected: np.ndarray, keys: EvaluationKeys, baby: np.ndarray | None,
                      gal: NativeGalois | None = None) -> PreparedProbe:
        """``W - 1`` one level down, from the projected probe's residues (caller maps SEAL errors).

        ``baby`` is passed through into the result (None: the caller fills it in).
        """
        p = self.ctx.params
        ctx = self.ctx
        ev = ctx.evaluator
        lifted = np.empty_like(projected)
        for j, q in enumerate(ctx.moduli):
            lifted[:, j] = mulmod_pow2(projected[:, j], p.norm_lift_bits, q)
        low = ctx.from_residues(lifted, float(2 ** (p.projected_scale_bits + p.norm_lift_bits)))
        ev.rescale_to_next_inplace(low)
        # |p'|**2 rather than p'**2: imaginary noise a dishonest key leaves in
        # p' raises W (a stricter threshold) instead of lowering it.
        lvl = p.data_primes - 1
        h3 = seal.Ciphertext(ctx.seal)
        ev.multiply(low, ctx.conjugate(low, keys.galois), h3)
        squares = ctx.to_residues(h3, lvl)
        sq = seal.Ciphertext(ctx.seal)
        ev.relinearize(h3, keys.relin, sq)
        if gal is not None:
            relinearised = ctx.to_residues(sq, lvl)
            return self._norms_result(baby, self._window_sums(relinearised, gal), sq.scale, keys, squares,
                                      relinearised, low.scale, gal)
        # Sum over b1 consecutive slots (b1 - 1 rotations by one), then over
        # the g2 giant steps (g2 - 1 rotations by b1): every slot's window.
        step = seal.Ciphertext(ctx.seal)
        ev.rotate_vector(sq, 1, keys.galois, step)
        window = seal.Ciphertext(ctx.seal)
        ev.add(sq, step, window)
        for _ in range(2, p.baby_steps):
            nxt = seal.Ciphertext(ctx.seal)
            ev.rotate_vector(step, 1, keys.galois, nxt)
            ev.add_inplace(window, nxt)
            step = nxt
        norms = window
        for _ in range(1, p.giant_steps):
            nxt = seal.Ciphertext(ctx.seal)
            ev.rotate_vector(norms, p.baby_steps, keys.galois, nxt)
            ev.add_inplace(nxt, window)
            norms = nxt
        return self._norms_result(baby, ctx.to_residues(norms, lvl), norms.scale, keys, squares,
                                  ctx.to_residues(sq, lvl), low.scale, None)

    def _window_sums(self, sq: np.ndarray, gal: NativeGalois) -> np.ndarray:
        """The window sums of :meth:`_window_norms` on residues, rotated in C."""
        p = self.ctx.params
        moduli = self.ctx.moduli[:sq.shape[1]]
        step = gal.rotate(sq, 1)
        window = _add(sq, step, moduli)
        for _ in range(2, p.baby_steps):
            step = gal.rotate(step, 1)
            window = _add(window, step, moduli)
        norms = window
        for _ in range(1, p.giant_steps):
            norms = _add(gal.rotate(norms, p.baby_steps), window, moduli)
        return norms

    def _norms_result(self, baby: np.ndarray | None, gap: np.ndarray, scale: float, keys: EvaluationKeys,
                      squares: np.ndarray, relinearised: np.ndarray, low_scale: float,
                      gal: NativeGalois | None) -> PreparedProbe:
        """``W - 1`` from the window sums ``gap`` (at ``scale``), the key check, and the real projection."""
        p = self.ctx.params
        ctx = self.ctx
        lvl = p.data_primes - 1
        for j, q in enumerate(ctx.moduli[:lvl]):
            # The constant 1 at this scale is the same value at every NTT point.
            one = np.uint64(round(scale) % q)
            row = gap[0, j]
            gap[0, j] = np.where(row >= one, row - one, row + (np.uint64(q) - one))
        check = self._key_check(keys, squares, relinearised, low_scale, gal)
        if p.complex_packing:
            # Two templates share a slot and the fold multiplies W - 1 and the
            # check by r_A + i*r_B, which would carry their imaginary noise
            # (about 2**-25 of W for an honest probe) into A's real part times
            # r_B / r_A, up to 2**13. Projected onto the real part here, once per
            # query, only the conjugation's key-switching noise is left there
            # (about 2**-61; a dishonest key's is outweighed by the key check).
            # The values are doubled: fold_norms halves the factors.
            gap = _add(gap, self._conjugate_residues(gap, scale, keys.galois, gal), ctx.moduli[:lvl])
            check = _add(check, self._conjugate_residues(check, 1.0, keys.galois, gal), ctx.moduli[:lvl])
        return PreparedProbe(baby if baby is not None else np.empty(0, dtype=np.uint64), gap, scale, check)

    def _conjugate_residues(self, residues: np.ndarray, scale: float, galois: seal.GaloisKeys,
                            gal: NativeGalois | None) -> np.ndarray:
        """The residues of ``conj`` of a ciphertext given by its residues (at its own level)."""
        if gal is not None:
            return gal.conjugate(residues)
        ctx = self.ctx
        conj = ctx.conjugate(ctx.from_residues(residues, scale), galois)
        return ctx.to_residues(conj, residues.shape[1])

    def _key_check(self, keys: EvaluationKeys, squares: np.ndarray, relinearised: np.ndarray,
                   low_scale: float, gal: NativeGalois | None = None) -> np.ndarray:
        """The check term that turns any noise a dishonest key adds into a stricter threshold.

        Evaluation keys cannot be checked for honesty, and the noise of a
        dishonest one, once large enough to matter, would shift thresholds
        at random. So each key is applied once more to a fresh encryption of
        zero at the data level (where every component of the key is used):
        ``T = rot_1(Z)``, ``rot_b1(Z')``, ``conj(Z'')``; the relinearisation
        key's noise is isolated as the difference ``D`` of relinearising the
        squares with and without an added product of two encryptions of zero.
        The term is ``sum |2**k * T|**2 + |D|**2`` read at
        ``combine scale / 2**key_check_factor_bits`` (``k = key_check_lift_bits``):
        the square of noise that is linear where it does harm. Honest keys
        leave about ``2**-18`` of a unit; noise that could move a threshold
        by ``2**-20`` or more weighs at least ``2**9`` times that move, and
        the ratio grows with the noise. Subtracted from every slot (times
        ``r``), it only ever makes the threshold stricter; when it outgrows
        the modulus the slot reads as noise. There is no band where it turns
        into a random threshold.

        Returns:
            ``uint64[2, L - 1, N]`` residues (relinearised).
        """
        p = self.ctx.params
        ctx = self.ctx
        ev = ctx.evaluator
        lvl = p.data_primes - 1
        moduli = ctx.moduli[:lvl]
        total = np.zeros((3, lvl, ctx.n), dtype=np.uint64)
        for kind in ("rot1", "rotb1", "conj"):
            z = self.encrypt_zero(keys.public)
            if gal is not None:
                zr = ctx.to_residues(z)
                tr = gal.rotate(zr, 1) if kind == "rot1" else (
                    gal.rotate(zr, p.baby_steps) if kind == "rotb1" else gal.conjugate(zr))
                tc = gal.conjugate(tr)
            else:
                t = seal.Ciphertext(ctx.seal)
                if kind == "rot1":
                    ev.rotate_vector(z, 1, keys.galois, t)
                elif kind == "rotb1":
                    ev.rotate_vector(z, p.baby_steps, keys.galois, t)
                else:
                    t = ctx.conjugate(z, keys.galois)
                tr, tc = ctx.to_residues(t), ctx.to_residues(ctx.conjugate(t, keys.galois))
            # |T|**2 at the data level; dropping q_L's residues is SEAL's exact mod switch.
            sq = _tensor(tr, tc, ctx.moduli)[:, :lvl]
            for j, q in enumerate(moduli):
                sq[:, j] = mulmod_pow2(sq[:, j], 2 * p.key_check_lift_bits, q)
            total = _add(total, sq, moduli)
        z3, z4 = (self._zero_at(keys.public, lvl) for _ in range(2))
        with_zero = ctx.from_residues(_add(squares, _tensor(z3, z4, moduli), moduli), low_scale * low_scale)
        ev.relinearize_inplace(with_zero, keys.relin)
        diff = _sub(ctx.to_residues(with_zero, lvl), relinearised, moduli)
        total = _add(total, _tensor(diff, self._conjugate_residues(diff, low_scale * low_scale, keys.galois, gal),
                                    moduli), moduli)
        check = ctx.from_residues(total, 1.0)
        ev.relinearize_inplace(check, keys.relin)
        return ctx.to_residues(check, lvl)

    def _zero_at(self, public_key: seal.PublicKey, lvl: int) -> np.ndarray:
        """Residues of a fresh encryption of zero with ``lvl`` data primes."""
        zero = seal.Ciphertext(self.ctx.seal)
        seal.Encryptor(self.ctx.seal, public_key).encrypt_zero(list(self.ctx.levels[lvl]), zero)
        return self.ctx.to_residues(zero, lvl)

    def _giant_steps(self, inner: np.ndarray, galois: seal.GaloisKeys) -> np.ndarray:
        """Horner: ``acc = rot_b1(acc) + inner_g`` from the last giant step down."""
        p = self.ctx.params
        ev = self.ctx.evaluator
        scale = float(2**p.score_scale_bits)
        gal = native_galois(self.ctx, galois)
        if gal is not None:
            acc = inner[-1]
            for g in range(p.giant_steps - 2, -1, -1):
                acc = _add(gal.rotate(acc, p.baby_steps), inner[g], self.ctx.moduli)
            return acc
        with _seal_errors():
            acc = self.ctx.from_residues(inner[-1], scale)
            for g in range(p.giant_steps - 2, -1, -1):
                ev.rotate_vector_inplace(acc, p.baby_steps, galois)
                ev.add_inplace(acc, self.ctx.from_residues(inner[g], scale))
            return self.ctx.to_residues(acc)

    def draw_masks(self) -> SlotMasks:
        """Fresh ``r`` (log-uniform in [1, 2**mask_log2_max]) and ``e`` for one block, one per position.

        ``|e| <= r*margin/8`` leaves ``7/8 * margin`` for the flood at r = 1
        (see :mod:`pprm.crypto.blind_params`). Empty slots get masks like any
        other, so the requester cannot tell them from templates scoring 0.
        """
        p = self.ctx.params
        n = p.templates_per_block
        r = np.exp2(csprng_uniform(n) * p.mask_log2_max)
        e = (2.0 * csprng_uniform(n) - 1.0) * r * (p.decision_margin / 8.0)
        return SlotMasks(r, e)

    def mask(self, score: np.ndarray, signs: np.ndarray, tau: float, masks: SlotMasks,
             galois: seal.GaloisKeys | None = None) -> np.ndarray:
        """``u*r * (score - u*tau) + e`` on residues at the top level, scale ``2**top_scale_bits``.

        With complex packing, slot ``j`` of the product holds ``u_A*s_A +
        i*u_B*s_B`` for its two positions ``A = j`` and ``B = N/2 + j``; with
        ``z = score - tau*(u_A + i*u_B)`` the result is ``a*z + b*conj(z) +
        e_A + i*e_B`` for ``a = (u_A*r_A + u_B*r_B) / 2`` and ``b = (u_A*r_A -
        u_B*r_B) / 2``, which is ``r_A*(s_A - tau) + i*r_B*(s_B - tau)`` plus
        the noise: each position under its own mask.

        Args:
            score: the block's product, holding ``u_j * s_j``.
            signs: the block's secret signs ``u``, one per position.
            tau: the threshold.
            masks: from :meth:`draw_masks`.
            galois: the requester's Galois keys (the conjugation; complex
                packing only).

        Returns:
            ``uint64[2, L, N]`` residues of ``r * (s - tau) + e``.

        Raises:
            ParameterError: complex packing without the Galois keys.
            CiphertextError: SEAL refuses the conjugation.
        """
        p = self.ctx.params
        ctx = self.ctx
        moduli = ctx.moduli
        if p.complex_packing:
            if galois is None:
                raise ParameterError("complex packing separates the two templates of a slot with the conjugation key")
            return self._mask_complex(score, signs, tau, masks, galois)
        ntt = _encode_ntt(ctx, [(signs * masks.r, p.mask_scale_bits, False), (masks.e, p.top_scale_bits, False),
                                (signs * tau, p.score_scale_bits, False)], len(moduli))
        c = score.copy()
        c[0] = _sub(c[0], ntt[2], moduli)
        c = _mulmod(ntt[0], c, moduli)
        c[0] = _add(c[0], ntt[1], moduli)
        return c

    def _mask_complex(self, score: np.ndarray, signs: np.ndarray, tau: float, masks: SlotMasks,
                      galois: seal.GaloisKeys) -> np.ndarray:
        """The complex-packing case of :meth:`mask`.

        ``a`` and ``b`` must be real in every slot *exactly*: an imaginary
        encoding error ``eps`` in them would carry ``eps * (s_B - tau)`` into
        A's real part, about 0.02 against a decision value of 1e-3 at
        ``r_A = 1``. So they are encoded as integer polynomials with
        ``m_{N-k} = -m_k`` (:func:`_real_coefficients`), whose slot values
        are real by construction; their real encoding error (about 0.02 of
        ``r``) only scales ``s - tau``. ``tau`` is subtracted before the masks
        for the same reason.
        """
        p = self.ctx.params
        ctx = self.ctx
        moduli = ctx.moduli
        h = p.slots
        ua, ub = signs[:h], signs[h:]
        ra, rb = masks.r[:h], masks.r[h:]
        ntt = _encode_ntt(ctx, [((ua * ra + ub * rb) / 2.0, p.mask_scale_bits, True),
                                ((ua * ra - ub * rb) / 2.0, p.mask_scale_bits, True),
                                (masks.e[:h] + 1j * masks.e[h:], p.top_scale_bits, False),
                                (tau * (ua + 1j * ub), p.score_scale_bits, False)], len(moduli))
        z = score.copy()
        z[0] = _sub(z[0], ntt[3], moduli)
        with _seal_errors():
            zc = self._conjugate_residues(z, float(2**p.score_scale_bits), galois, native_galois(ctx, galois))
        c = _add(_mulmod(ntt[0], z, moduli), _mulmod(ntt[1], zc, moduli), moduli)
        c[0] = _add(c[0], ntt[2], moduli)
        return c

    def fold_norms(self, masked: np.ndarray, tau: float, masks: SlotMasks,
                   prepared: PreparedProbe) -> tuple[np.ndarray, float]:
        """Rescale a masked block one level and add ``-r * (tau / 2 * (W - 1) + key check)``.

        Args:
            masked: top-level residues from :meth:`mask`.
            tau: the threshold.
            masks: the block's masks (the same ``r``).
            prepared: the query's window norms (None without the checks).

        Returns:
            The residues one level down and their exact scale.
        """
        p = self.ctx.params
        ctx = self.ctx
        lvl = p.data_primes - 1
        moduli = ctx.moduli[:lvl]
        with _seal_errors():
            ct = ctx.from_residues(masked, float(2**p.top_scale_bits))
            ctx.evaluator.rescale_to_next_inplace(ct)
            scale = ct.scale
            c = ctx.to_residues(ct, lvl)
        if prepared.norm_gap is None or prepared.key_check is None:
            return c, scale
        # The factor's scale is exactly (scale of c) / (scale of W - 1); it is
        # encoded at 2**norm_factor_bits with the leftover ratio folded into
        # the values (a float64 factor within 2**-52 of 1 of its ideal).
        ratio = scale / prepared.norm_scale / 2.0**p.norm_factor_bits
        r: np.ndarray = masks.r
        if p.complex_packing:
            # A's real part and B's imaginary part, each with its own r; the
            # projected norms and check are doubled (see prepare), so halve.
            r = (masks.r[:p.slots] + 1j * masks.r[p.slots:]) / 2.0
        f = _encode_ntt(ctx, [(-r * (tau / 2.0) * ratio, p.norm_factor_bits, False),
                              (-r, p.key_check_factor_bits, False)], len(moduli))
        c = _add(c, _mulmod(f[0], prepared.norm_gap, moduli), moduli)
        return _add(c, _mulmod(f[1], prepared.key_check, moduli), moduli), scale

    def hide(self, combined: np.ndarray, scale: float, public_key: seal.PublicKey) -> bytes:
        """Re-randomise, flood, and rescale a block (one level below the top) to q0.

        Args:
            combined: residues from :meth:`fold_norms`.
            scale: their exact scale.
            public_key: the requester's public key.

        Returns:
            The packed answer block (:mod:`pprm.crypto.answer_codec`).
        """
        p = self.ctx.params
        ctx = self.ctx
        lvl = p.data_primes - 1
        moduli = ctx.moduli[:lvl]
        # The flood is sized at the top level; one rescale later it is that
        # width divided by the prime rescaled away.
        width = p.flood_bits - p.coeff_modulus_bits[lvl]
        flood = ctx.to_ntt(uniform_residues(width, ctx.n, moduli)[None])[0]
        with _seal_errors():
            zero = seal.Ciphertext(ctx.seal)
            seal.Encryptor(ctx.seal, public_key).encrypt_zero(list(ctx.levels[lvl]), zero)
            z = ctx.to_residues(zero, lvl)
            c = combined.copy()
            c[0] = _add(_add(c[0], z[0], moduli), flood, moduli)
            c[1] = _add(c[1], z[1], moduli)
            out = ctx.from_residues(c, scale)
            for _ in range(lvl - 1):
                ctx.evaluator.rescale_to_next_inplace(out)
            return encode_answer(ctx, out)

    def evaluate(self, probe: seal.Ciphertext, keys: EvaluationKeys, tau: float,
                 blocks: Sequence[tuple[np.ndarray, np.ndarray]], progress: Progress | None = None) -> list[bytes]:
        """Answer blocks for ``(diagonals, signs)`` pairs, in the order given.

        Args:
            probe: the requester's ciphertext, already strictly parsed at the
                data level and scale ``2**probe_scale_bits``.
            keys: the requester's evaluation keys.
            tau: the threshold, in ``[2*margin, 1)`` so empty slots (score 0)
                are certain non-hits.
            blocks: per block, its diagonals ``uint64[g2, b1, L, N]`` and its
                secret slot signs.
            progress: called with ``(blocks done, total)``.

        Returns:
            One packed answer block per input block.

        Raises:
            ParameterError: tau out of range.
            CiphertextError: the requester's keys make SEAL refuse an
                intermediate ciphertext.

        Warning:
            The masks, the encryptions of zero and the flood must be fresh
            per query and from the CSPRNG; they are drawn here and never stored.
        """
        p = self.ctx.params
        if not 2 * p.decision_margin <= tau < 1.0:
            raise ParameterError(f"threshold must be in [{2 * p.decision_margin}, 1), got {tau}")
        if not blocks:
            return []
        prepared = self.prepare(probe, keys)
        out = []

        def mac(k: int) -> np.ndarray:
            return kernel.plain_mac(blocks[k][0], prepared.baby, self.ctx.moduli)

        # The kernel releases the GIL: the next block's multiply-accumulate runs
        # while this thread does the current block's rotations and masking in SEAL.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-blind-mac") as pool:
            pending = pool.submit(mac, 0)
            for k in range(len(blocks)):
                inner = pending.result()
                if k + 1 < len(blocks):
                    pending = pool.submit(mac, k + 1)
                score = self._giant_steps(inner, keys.galois)
                masks = self.draw_masks()
                masked = self.mask(score, blocks[k][1], tau, masks, keys.galois)
                combined, scale = self.fold_norms(masked, tau, masks, prepared)
                out.append(self.hide(combined, scale, keys.public))
                if progress is not None:
                    progress(k + 1, len(blocks))
        return out


class BlindMatcher(BlindEvaluator):
    """Evaluates blind queries against one database.

    Args:
        ctx: the blind context of the database's parameter set.
        database: the diagonals.
        checks: as :class:`BlindEvaluator` (measurement only when False).

    Raises:
        ParameterError: the database belongs to another parameter set.
    """

    def __init__(self, ctx: BlindContext, database: BlindDatabase, *, checks: bool = True) -> None:
        if database.params_name != ctx.params.name:
            raise ParameterError("the blind database was built for another parameter set")
        super().__init__(ctx, checks=checks)
        self.db = database

    def __repr__(self) -> str:
        return f"BlindMatcher({self.ctx.params.name}, {self.db.size} templates)"

    def answer(self, probe: seal.Ciphertext, keys: EvaluationKeys, tau: float) -> BlindAnswer:
        """Evaluate one blind query over the whole database (see :meth:`evaluate`).

        Returns:
            The answer, blocks in a fresh random order.

        Raises:
            ParameterError: tau out of range.
            CiphertextError: as :meth:`evaluate`.

        Warning:
            The block order must be fresh per query and from the CSPRNG; it is
            drawn here and kept only in the returned answer.
        """
        return self._answer(probe, keys, tau, None)

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
            CiphertextError: the requester's keys do not load, or make SEAL
                refuse an intermediate ciphertext.

        Warning:
            As :meth:`answer`: the block order is fresh per query, from the CSPRNG.
        """
        return self._answer(request.ciphertext, request.keys.load(self.ctx), tau, progress)

    def _answer(self, probe: seal.Ciphertext, keys: EvaluationKeys, tau: float,
                progress: Progress | None) -> BlindAnswer:
        order = [int(i) for i in secret_permutation(self.db.blocks)]
        out = self.evaluate(probe, keys, tau, [(self.db.diagonals[b], self.db.signs[b]) for b in order], progress)
        return BlindAnswer(out, order)


def _encode_ntt(ctx: BlindContext, rows: Sequence[tuple[np.ndarray, int, bool]], primes: int) -> np.ndarray:
    """Encode slot vectors exactly and NTT-transform them at the first ``primes`` primes.

    Each row is ``(values, scale_bits, exact_real)``; ``exact_real`` rows are
    made exactly real in every slot (:func:`_real_coefficients`). On the
    native backend the C encoder and NTT do it (the numpy path's words
    exactly: tests/matching/test_encode_native.py, test_mask_kernel.py),
    otherwise numpy's long-double encoder and SEAL's NTT.

    Returns:
        ``uint64[len(rows), primes, N]``.
    """
    moduli = tuple(int(q) for q in ctx.moduli[:primes])
    native = native_transforms(ctx.n, moduli)
    if native is None:
        coeffs = np.stack([_real_coefficients(v, b, ctx.n) if real else encode_coefficients(v, b, ctx.n)
                           for v, b, real in rows])
        return ctx.to_ntt(coefficients_to_residues(coeffs, moduli))
    encoder, ntt = native
    out = np.stack([encoder.residues(v, b) for v, b, _real in rows])
    half = ctx.n // 2
    for k, (_v, _b, real) in enumerate(rows):
        if real:
            # The residues of m_{N-k} = -m_k and m_{N/2} = 0 (see _real_coefficients).
            for j, q in enumerate(moduli):
                row = out[k, j]
                row[half] = 0
                low = row[1:half][::-1]
                row[half + 1:] = np.where(low == 0, low, np.uint64(q) - low)
    return ntt.forward(out)


def _real_coefficients(values: np.ndarray, scale_bits: int, n: int) -> np.ndarray:
    """Integer polynomials whose slot values are exactly real, near ``2**scale_bits * values``.

    A polynomial has real values at every slot exactly when ``m(X) =
    m(X**-1)`` in ``Z[X]/(X**N + 1)``, that is ``m_{N-k} = -m_k`` for ``0 < k <
    N`` (so ``m_{N/2} = 0``). The exact encoding of real values satisfies it
    up to the last bits of the long-double transform; rounding could break it,
    so the upper half is set from the lower one.

    Args:
        values: ``float[..., N/2]`` real slot values.
        scale_bits: log2 of the scale.
        n: the ring dimension N.

    Returns:
        ``longdouble[..., N]`` integer-valued coefficients.
    """
    coeffs = encode_coefficients(values, scale_bits, n)
    half = n // 2
    coeffs[..., half] = 0
    coeffs[..., half + 1:] = -coeffs[..., 1:half][..., ::-1]
    return coeffs


def _tensor(a: np.ndarray, b: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """The size-3 product of two size-2 ciphertexts' residues (NTT form), with no scale bookkeeping."""
    x = _mulmod(a[0], b, moduli)
    y = _mulmod(a[1], b, moduli)
    return np.stack([x[0], _add(x[1], y[0], moduli), y[1]])


def _add(a: np.ndarray, b: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    out = a + b  # below 2**62: every prime is below 2**61
    # out - q wraps around to above out exactly when out < q: the minimum is the reduced word.
    np.minimum(out, out - np.array(moduli, dtype=np.uint64)[:, None], out=out)
    return out


def _sub(a: np.ndarray, b: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    out = np.empty_like(a)
    for j, q in enumerate(moduli):
        out[..., j, :] = np.where(a[..., j, :] >= b[..., j, :], a[..., j, :] - b[..., j, :],
                                  a[..., j, :] + (np.uint64(q) - b[..., j, :]))
    return out
