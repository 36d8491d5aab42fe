"""Named CKKS parameter sets for the blind profile, validated like the sealed ones.

In the blind profile the requester encrypts its probe under its own key. The
responder re-randomises the probe, projects it onto its real part, computes
``r * (<G_j, p> - tau * (1 + W_j) / 2) + e`` with baby-step/giant-step
diagonals (``W_j`` the squared norm of slot j's probe window, computed on a
rescaled copy of the probe one level down), re-randomises the result,
floods the noise, and rescales the answer down to the first prime
(docs/DESIGN.md sections 2-4 and 9). Precision, not depth, sets the modulus:
the flood is 2**30 times the worst computation noise and must still leave
every decision with ``|s - tau| >= 1e-3`` exact at the smallest mask ``r = 1``.

Warning:
    Sets named ``INSECURE*`` are for tests only; :func:`get` refuses them
    unless ``allow_insecure=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pprm.crypto.registry import Registry, canonical_fields, check_ring, digest_of
from pprm.errors import ParameterError

__all__ = ["BlindParameterSet", "DEFAULT_BLIND_PARAMS", "get", "names", "by_digest", "FLOOD_FACTOR_BITS"]

DEFAULT_BLIND_PARAMS = "pprm-blind-n16384-complex-v3"

# The flood's standard deviation is 2**30 times the worst-case computation
# noise (docs/DESIGN.md section 4; OpenFHE's NOISE_FLOODING uses the same s = 30).
FLOOD_FACTOR_BITS = 30


@dataclass(frozen=True)
class BlindParameterSet:
    """A validated, immutable CKKS parameter set for the blind profile.

    Attributes:
        name: Registry name.
        poly_modulus_degree: Ring dimension N; a block holds N/2 templates.
        coeff_modulus_bits: ``[q0, q1, ..., P]``: the answer prime q0, the
            primes the answer is rescaled through, and SEAL's special prime.
        dim: Template dimension d; must divide N/2 (the probe is replicated
            N/(2d) times) and be a multiple of :attr:`baby_steps`.
        baby_steps: b1 of the baby-step/giant-step product; the requester's
            Galois keys are for rotations by 1 and by b1 only.
        probe_scale_bits: log2 of the scale the requester encodes its probe
            at. The responder's real projection ``p + conj(p)`` doubles the
            value, so the projected probe is read at one bit more.
        diagonal_scale_bits: log2 of the scale gallery diagonals are encoded at.
        mask_scale_bits: log2 of the scale the mask r is encoded at.
        mask_log2_max: r is log-uniform in [1, 2**mask_log2_max].
        norm_lift_bits: the projected probe is multiplied by ``2**k`` for
            this k and rescaled by the last data prime before the window
            norms are computed, so that the norms land one level down at a
            scale that leaves room for an exact factor ``r * tau / 2``.
        key_check_lift_bits: the evaluation keys' check outputs ``T`` are
            multiplied by ``2**k`` for this k before they are squared; with
            ``key_check_factor_bits`` it sets the check's weights (see
            :meth:`pprm.matching.blind.BlindEvaluator.prepare`).
        key_check_factor_bits: the scale the check's factor ``r`` is
            encoded at; the check term is read at the combine scale divided by it.
        answer_drop_bits: low bits of every answer coefficient (coefficient
            form, at q0) rounded away before sending; the rounding adds far
            less noise than the flood.
        noise_bits_below_scale: the worst-case computation noise (largest
            coefficient of decryption minus exact encoding, before the flood)
            is at most ``2**(top_scale_bits - noise_bits_below_scale)``;
            measured, and checked by a test.
        decision_margin: |s - tau| at and above which decisions must be exact.
        insecure: True for test-only sets below 128-bit security.
        packing: ``"real"``: one template per slot, N/2 per block;
            ``"complex"``: two, one in the real and one in the imaginary part
            of each slot, N per block, separated with the conjugation key
            before they are masked (:mod:`pprm.matching.blind`).
    """

    name: str
    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    dim: int
    baby_steps: int
    probe_scale_bits: int
    diagonal_scale_bits: int
    mask_scale_bits: int
    mask_log2_max: int
    norm_lift_bits: int
    key_check_lift_bits: int
    key_check_factor_bits: int
    answer_drop_bits: int
    noise_bits_below_scale: int
    decision_margin: float
    insecure: bool
    packing: str = "real"

    @property
    def slots(self) -> int:
        """CKKS slots per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def complex_packing(self) -> bool:
        """Two templates per slot."""
        return self.packing == "complex"

    @property
    def templates_per_block(self) -> int:
        """Templates one block (one answer ciphertext) covers: N/2, or N with complex packing."""
        return self.slots * (2 if self.complex_packing else 1)

    @property
    def giant_steps(self) -> int:
        """g2 = d / b1."""
        return self.dim // self.baby_steps

    @property
    def data_primes(self) -> int:
        """Primes at the level the probe arrives and the product is computed."""
        return len(self.coeff_modulus_bits) - 1

    @property
    def projected_scale_bits(self) -> int:
        """log2 of the scale the real-projected probe ``(p + conj(p)) / 2`` is read at."""
        return self.probe_scale_bits + 1

    @property
    def score_scale_bits(self) -> int:
        """log2 of the scale of the inner products (projected probe times diagonals)."""
        return self.projected_scale_bits + self.diagonal_scale_bits

    @property
    def norm_probe_bits(self) -> int:
        """log2 (nominal) of the scale of the probe copy the norms are computed on, one level down."""
        return self.projected_scale_bits + self.norm_lift_bits - self.coeff_modulus_bits[-2]

    @property
    def combine_scale_bits(self) -> int:
        """log2 (nominal) of the scale one level down, where the window-norm term joins the answer."""
        return self.top_scale_bits - self.coeff_modulus_bits[-2]

    @property
    def norm_factor_bits(self) -> int:
        """log2 (nominal) of the scale the factor ``r * tau / 2`` of ``W - 1`` is encoded at."""
        return self.combine_scale_bits - 2 * self.norm_probe_bits

    @property
    def top_scale_bits(self) -> int:
        """log2 of the scale of the masked value before rescaling."""
        return self.score_scale_bits + self.mask_scale_bits

    @property
    def flood_bits(self) -> int:
        """The flood is uniform on [-2**flood_bits, 2**flood_bits) per coefficient.

        Its standard deviation 2**flood_bits / sqrt(3) is at least
        2**FLOOD_FACTOR_BITS times the noise bound.
        """
        bound = self.top_scale_bits - self.noise_bits_below_scale
        return bound + FLOOD_FACTOR_BITS + math.ceil(math.log2(math.sqrt(3.0)))

    @property
    def log_q(self) -> int:
        """Total coefficient-modulus bits (what the security bound limits)."""
        return sum(self.coeff_modulus_bits)

    def canonical(self) -> dict[str, Any]:
        """The fields that define the set, as a JSON-ready dict.

        ``packing`` appears only for complex sets, so the real sets keep the
        digests they were announced under before the field existed.
        """
        fields = canonical_fields(self)
        if not self.complex_packing:
            del fields["packing"]
        return fields

    @property
    def digest(self) -> str:
        """SHA-256 over the canonical JSON of the set, hex; goes into every header."""
        return digest_of(b"pprm/blind-params/v1", self.canonical())


def _validate(lit: dict[str, Any]) -> BlindParameterSet:
    """Turn an unchecked literal into a BlindParameterSet, or raise ParameterError."""
    try:
        ps = BlindParameterSet(
            name=str(lit["name"]),
            poly_modulus_degree=int(lit["poly_modulus_degree"]),
            coeff_modulus_bits=tuple(int(b) for b in lit["coeff_modulus_bits"]),
            dim=int(lit["dim"]),
            baby_steps=int(lit["baby_steps"]),
            probe_scale_bits=int(lit["probe_scale_bits"]),
            diagonal_scale_bits=int(lit["diagonal_scale_bits"]),
            mask_scale_bits=int(lit["mask_scale_bits"]),
            mask_log2_max=int(lit["mask_log2_max"]),
            norm_lift_bits=int(lit["norm_lift_bits"]),
            key_check_lift_bits=int(lit["key_check_lift_bits"]),
            key_check_factor_bits=int(lit["key_check_factor_bits"]),
            answer_drop_bits=int(lit["answer_drop_bits"]),
            noise_bits_below_scale=int(lit["noise_bits_below_scale"]),
            decision_margin=float(lit["decision_margin"]),
            insecure=bool(lit["insecure"]),
            packing=str(lit.get("packing", "real")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ParameterError(f"parameter literal is malformed: {exc}") from None
    check_ring(ps.name, ps.poly_modulus_degree, ps.log_q, ps.insecure)
    bits = ps.coeff_modulus_bits
    if len(bits) < 3 or any(not 20 <= b <= 60 for b in bits):
        raise ParameterError(f"{ps.name}: need [q0, rescale primes..., P], each 20..60 bits")
    if ps.dim & (ps.dim - 1) or ps.slots % ps.dim or ps.dim % ps.baby_steps or ps.baby_steps < 2:
        raise ParameterError(f"{ps.name}: dim must be a power of two dividing N/2, and a multiple of b1")
    if ps.packing not in ("real", "complex"):
        raise ParameterError(f"{ps.name}: packing must be 'real' or 'complex'")
    # The masked value r*(s - tau) with s >= -1, tau < 1 and r <= 2**mask_log2_max
    # must stay below half the modulus both before rescaling and at q0. A
    # coefficient is at most the mean slot magnitude times the scale; with
    # complex packing a slot holds two such values, sqrt(2) times larger, and
    # the real set's one bit of slack (it allows a carry) absorbs that half bit.
    worst = ps.mask_log2_max + 1
    if ps.top_scale_bits + worst + 1 > sum(bits[:-1]) - 1:
        raise ParameterError(f"{ps.name}: the masked value overflows the top modulus")
    # One level down (the last data prime rescaled away), the answer with
    # |r*(s - tau*(1 + W)/2)| < 2**worst must fit; the probe copy the norms
    # are computed on must keep about 2**-24 precision, and W's factor
    # r*tau/2 must be encoded precisely (2**-20 of its value at r = 1).
    if ps.combine_scale_bits + worst + 1 > sum(bits[:-2]) - 1:
        raise ParameterError(f"{ps.name}: the answer one level down overflows its modulus")
    if ps.norm_probe_bits < 30 or ps.norm_factor_bits < 20:
        raise ParameterError(f"{ps.name}: norm_lift_bits leaves the window norms too imprecise")
    if not 8 <= ps.key_check_factor_bits <= 40 or not 0 <= ps.key_check_lift_bits <= 16:
        raise ParameterError(f"{ps.name}: key check scales out of range")
    final_scale = ps.top_scale_bits - sum(bits[1:-1])
    if final_scale < 20 or final_scale + worst + 1 > bits[0] - 1:
        raise ParameterError(f"{ps.name}: the answer scale 2**{final_scale} does not fit q0 = 2**{bits[0]}")
    # Key-switching noise grows like q_i/P; P at least the largest data prime
    # keeps it near the fresh encryption noise.
    if bits[-1] < max(bits[:-1]):
        raise ParameterError(f"{ps.name}: the special prime must be at least as large as every data prime")
    if not 0 < ps.decision_margin < 0.1:
        raise ParameterError(f"{ps.name}: decision_margin must be in (0, 0.1)")
    # Answers are packed in whole bytes; the rounding (at most 2**(t-1) per
    # coefficient of c0 and c1, times the ternary secret) must stay far below
    # the flood after rescaling, 2**(flood_bits - sum of rescale primes).
    kept = bits[0] - ps.answer_drop_bits
    if kept % 8 or not 0 <= ps.answer_drop_bits <= ps.flood_bits - sum(bits[1:-1]) - 8:
        raise ParameterError(f"{ps.name}: answer_drop_bits must leave whole bytes and stay under the flood")
    return ps


_BLIND_COMMON: dict[str, Any] = {
    # ArcFace embeddings (the mission's template size).
    "dim": 512,
    # b1 = 64 baby steps and 8 giant steps: 63 rotations of the probe and 7
    # of the window norms per query, 7 per block, and three Galois keys
    # (steps 1 and 64, and the conjugation for the real projection).
    "baby_steps": 64,
    # 2**82: probe scale (2**83 after the real projection doubles the
    # value and the noise alike). The probe's encryption noise and the key-switching
    # noise of the 63 chained baby-step rotations, relative to this scale,
    # dominate the computation noise (measured: 2**-68 of the product's scale
    # for a random gallery). docs/DESIGN.md section 9 used 2**66 with r <= 2**10
    # at N=8192; the wider mask range and the worst-case galleries below
    # cost the extra bits.
    "probe_scale_bits": 82,
    # 2**70: diagonal scale; rounding the exactly computed diagonals to
    # integers then adds about 2**-70 relative error per diagonal.
    "diagonal_scale_bits": 70,
    # 2**11: mask scale (docs/DESIGN.md section 9); r's encoding error is about
    # 0.02 in absolute terms, which cannot flip the sign of r*(s - tau).
    "mask_scale_bits": 11,
    # r log-uniform in [1, 2**13]: the rank correlation of a non-hit's
    # decrypted value with its score is about 3.4*(sd of impostor scores /
    # tau) / (13 ln 2) = 0.041 for sd 0.044 and tau = 0.4 (docs/DESIGN.md
    # section 9; measured 0.040 by tests/matching/test_blind_fidelity.py).
    "mask_log2_max": 13,
    # 2**15: the projected probe (2**83) times 2**15, rescaled by a 60-bit
    # prime, sits at about 2**38 one level down: the rescale's rounding is
    # about 2**-25 of each component, so W is exact to about 2**-24 and
    # shifts an honest threshold by under 2**-25. W then sits at 2**76 and
    # its factor r*tau/2 at 2**28 (error about 40/2**28 in the slots).
    "norm_lift_bits": 15,
    # The key check is read at 2**(104 - 24) = 2**80, its factor r encoded
    # at 2**24. A key switch's noise of x per slot (about 2**15 for honest
    # keys at N=16384) costs a threshold 2**(30 + 2 log2 x - 80) from the
    # rotated or conjugated zeros (lifted by 2**15 before squaring), and the
    # relinearisation difference (integers at the norms' scale, about 2**30
    # from the product of two fresh zeros) 2**(2 log2 x - 80): honest keys
    # about 2**-18 in all, a thousand times under the decision margin. The
    # harm the same noise can do is linear: at most 2**(log2 x - 40) (the
    # conjugation in |p'|**2, the most exposed use), so the check outweighs
    # it from the first 2**-20 of harm on, by a factor that grows with x.
    "key_check_lift_bits": 15,
    "key_check_factor_bits": 10,
    # |s - tau| >= 1e-3 must decide exactly (docs/DESIGN.md sections 4 and 8).
    "decision_margin": 1e-3,
    # 12 of q0's 60 bits are rounded off every answer coefficient: 48 bits
    # (6 bytes) per coefficient, 24 bytes per template. The rounding error
    # times the ternary secret is about 2**17 per coefficient, 2**-19 of the
    # answer's scale in the slots: 100 times below the flood (2**24 per
    # coefficient after rescaling).
    "answer_drop_bits": 12,
}

_LITERALS: tuple[dict[str, Any], ...] = (
    # N=16384: 8192 templates per block. [60 | 60, 60 | 60]: the product
    # lands at scale 2**163 under a 180-bit modulus (2**177 at worst with
    # r = 2**13 and |s - tau| < 2), is rescaled by two primes to scale 2**43
    # at q0 (the answer: 2 x 60 bits per slot, 30 bytes per template), and
    # the 60-bit special prime keeps key-switching noise near the encryption
    # noise. log Q = 240, under the 431-bit bound.
    # noise_bits_below_scale = 50: the largest noise coefficient measured
    # before the flood, with r = 2**13 in every slot and fresh keys, was
    # 2**-54.7 of the scale for a random gallery and up to 2**-49.87 for the
    # worst structured one (all components equal; one key pair in 53 passed
    # 2**-50; tests/matching/test_blind_noise.py), so the bound is a sizing
    # point met statistically. The
    # flood is then uniform on [-2**144, 2**144): 1.0e-4 (std) in the slots,
    # 8.7 standard deviations below the smallest value a decision at
    # |s - tau| = 1e-3 and r = 1 can take.
    # N=8192 (log Q <= 214) cannot hold both that flood and a mask range
    # wide enough for the rank-correlation target at tau = 0.4 (measured
    # with [44, 40, 40, 40 | 50]: 0.9 bits of margin for random galleries,
    # 3.7 bits short for structured ones, with r <= 2**12).
    {"name": "pprm-blind-n16384-v2", "poly_modulus_degree": 16384,
     "coeff_modulus_bits": [60, 60, 60, 60], "insecure": False,
     "noise_bits_below_scale": 50, **_BLIND_COMMON},
    # Test-only: the same primes and scales at N=1024 (512 templates per
    # block, one probe replica); far below 128-bit security (log Q = 240 at
    # N=1024), it keeps tests fast.
    {"name": "INSECURE-blind-n1024-v2", "poly_modulus_degree": 1024,
     "coeff_modulus_bits": [60, 60, 60, 60], "insecure": True,
     "noise_bits_below_scale": 50, **_BLIND_COMMON},
    # Complex packing: the same ring, primes and scales, two templates per
    # slot (16384 per block): half the diagonals' RAM per template, half the
    # answer (12 bytes per template), about half the multiply-accumulate, for
    # one conjugation more per block. A slot's product is complex, so the
    # computation noise a decision sees is the real or imaginary part of a sum
    # over twice the terms: measured in tests/matching/test_blind_noise.py,
    # and the flood sized from that measurement.
    {"name": "pprm-blind-n16384-complex-v3", "poly_modulus_degree": 16384,
     "coeff_modulus_bits": [60, 60, 60, 60], "insecure": False, "packing": "complex",
     "noise_bits_below_scale": 50, **_BLIND_COMMON},
    # Test-only, as INSECURE-blind-n1024-v2 (1024 templates per block).
    {"name": "INSECURE-blind-n1024-complex-v3", "poly_modulus_degree": 1024,
     "coeff_modulus_bits": [60, 60, 60, 60], "insecure": True, "packing": "complex",
     "noise_bits_below_scale": 50, **_BLIND_COMMON},
)

_REGISTRY: Registry[BlindParameterSet] = Registry("blind parameter set", (_validate(lit) for lit in _LITERALS))


def names(*, include_insecure: bool = False) -> list[str]:
    """Names of the registered blind-profile sets, sorted."""
    return _REGISTRY.names(include_insecure=include_insecure)


def get(name: str, *, allow_insecure: bool = False) -> BlindParameterSet:
    """Look up a blind-profile parameter set by name.

    Args:
        name: a registered name.
        allow_insecure: permit ``INSECURE*`` sets (tests only).

    Returns:
        The validated set.

    Raises:
        ParameterError: unknown name, or an insecure set without permission.
    """
    return _REGISTRY.get(name, allow_insecure=allow_insecure)


def by_digest(digest: str, *, allow_insecure: bool = False) -> BlindParameterSet:
    """Find the registered blind set with this digest (the downgrade check for peers).

    Raises:
        ParameterError: no allowed set has this digest.
    """
    return _REGISTRY.by_digest(digest, allow_insecure=allow_insecure)
