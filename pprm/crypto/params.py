"""Named CKKS parameter sets: unchecked literals validated into immutable sets.

Every set a state can use is listed in :data:`_LITERALS`. A literal becomes a
:class:`ParameterSet` only after :func:`_validate` has checked the security
bound and the numeric headroom of the sealed-profile computation. Peers refer
to a set by name and prove agreement with :attr:`ParameterSet.digest`, which
goes into every signed message header.

Warning:
    Sets whose name starts with ``INSECURE`` exist only to make tests fast.
    :func:`get` refuses them unless ``allow_insecure=True`` is passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pprm.crypto.registry import HE_MAX_LOG_Q, Registry, canonical_fields, check_ring, digest_of
from pprm.errors import ParameterError

__all__ = [
    "ParameterSet",
    "HE_MAX_LOG_Q",
    "DEFAULT_PARAMS",
    "get",
    "names",
    "by_digest",
]


# Complex packing halves RAM, disk and kernel work per template; measured at
# 1M x 512 it is the set that meets 1 s per query and 10 KB per template.
DEFAULT_PARAMS = "pprm-sealed-n8192-complex-v1"


@dataclass(frozen=True)
class ParameterSet:
    """A validated, immutable CKKS parameter set for the sealed profile.

    Attributes:
        name: Registry name, e.g. ``pprm-sealed-n8192-v1``.
        poly_modulus_degree: Ring dimension N; a ciphertext has N/2 CKKS
            slots, and a block holds N/2 templates with real packing, N with
            complex packing (see :attr:`templates_per_block`).
        coeff_modulus_bits: Bit sizes of the primes; the last one is SEAL's
            special (key-switching) prime when there is more than one.
        gallery_scale_bits: log2 of the scale gallery slots are encoded at.
        probe_scale_bits: log2 of the factor probe components are quantised by.
        mask_scale_bits: log2 of the scale the positive mask r is encoded at.
        mask_log2_max: masks r are drawn log-uniformly from [1, 2**mask_log2_max].
        template_grid_bits: templates are enrolled rounded to multiples of
            2**-template_grid_bits, so the owner can recover them exactly when
            it decrypts a block to remove a record, and re-encrypt without
            carrying the old noise forward.
        decision_margin: |s - tau| at and above which decisions must be exact.
        insecure: True for test-only sets below 128-bit security.
        packing: ``"real"``: one template per CKKS slot; ``"complex"``: two,
            in the real and imaginary parts (docs/DESIGN.md sections 3 and 9). The
            complex set needs a conjugation key, so a special prime.
    """

    name: str
    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    gallery_scale_bits: int
    probe_scale_bits: int
    mask_scale_bits: int
    mask_log2_max: int
    template_grid_bits: int
    decision_margin: float
    insecure: bool
    packing: str

    @property
    def slots(self) -> int:
        """CKKS slots per ciphertext (N/2); not templates per block, see below."""
        return self.poly_modulus_degree // 2

    @property
    def templates_per_block(self) -> int:
        """Templates a gallery block holds: N/2 with real packing, N with complex."""
        return self.slots * self.score_gain

    @property
    def score_gain(self) -> int:
        """Factor on the masked value: complex de-interleaving yields ``2*s``, real ``s``."""
        return 2 if self.packing == "complex" else 1

    @property
    def result_ciphertexts_per_block(self) -> int:
        """Ciphertexts a masked result carries per block: one, both halves of a complex slot in it.

        The real part of each slot carries the first template's decision and
        the imaginary part the second's (:mod:`pprm.crypto.masked_codec`).
        """
        return 1

    @property
    def data_primes(self) -> int:
        """Primes at the level ciphertexts are stored and computed at."""
        n = len(self.coeff_modulus_bits)
        return 1 if n == 1 else n - 1

    @property
    def result_scale_bits(self) -> int:
        """log2 of the scale of the masked result r*(s - tau) + e."""
        return self.gallery_scale_bits + self.probe_scale_bits + self.mask_scale_bits

    @property
    def log_q(self) -> int:
        """Total coefficient-modulus bits (what the security bound limits)."""
        return sum(self.coeff_modulus_bits)

    def canonical(self) -> dict[str, Any]:
        """The fields that define the set, as a JSON-ready dict."""
        return canonical_fields(self)

    @property
    def digest(self) -> str:
        """SHA-256 over the canonical JSON of the set, hex; goes into every header."""
        return digest_of(b"pprm/params/v1", self.canonical())


def _validate(lit: dict[str, Any]) -> ParameterSet:
    """Turn an unchecked literal into a ParameterSet, or raise ParameterError."""
    try:
        ps = ParameterSet(
            name=str(lit["name"]),
            poly_modulus_degree=int(lit["poly_modulus_degree"]),
            coeff_modulus_bits=tuple(int(b) for b in lit["coeff_modulus_bits"]),
            gallery_scale_bits=int(lit["gallery_scale_bits"]),
            probe_scale_bits=int(lit["probe_scale_bits"]),
            mask_scale_bits=int(lit["mask_scale_bits"]),
            mask_log2_max=int(lit["mask_log2_max"]),
            template_grid_bits=int(lit["template_grid_bits"]),
            decision_margin=float(lit["decision_margin"]),
            insecure=bool(lit["insecure"]),
            packing=str(lit["packing"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ParameterError(f"parameter literal is malformed: {exc}") from None
    check_ring(ps.name, ps.poly_modulus_degree, ps.log_q, ps.insecure)
    if any(not 20 <= b <= 60 for b in ps.coeff_modulus_bits):
        raise ParameterError(f"{ps.name}: SEAL primes must be 20..60 bits")
    if ps.data_primes != 1:
        raise ParameterError(f"{ps.name}: the sealed computation runs at one data prime")
    if ps.packing not in ("real", "complex"):
        raise ParameterError(f"{ps.name}: packing must be 'real' or 'complex'")
    # The conjugation key needs SEAL's special prime; key-switching noise
    # grows like q0/P, so P must be at least as large as q0 to keep it far
    # below the gallery's own encryption noise.
    bits = ps.coeff_modulus_bits
    if ps.packing == "complex" and (len(bits) != 2 or bits[1] < bits[0]):
        raise ParameterError(f"{ps.name}: complex packing needs [q0, P] with a special prime P >= q0")
    # Worst slot of the masked result: r <= 2**mask_log2_max, |s - tau| <= 2,
    # the packing's gain (complex de-interleaving doubles every score), plus
    # the masking noise; it must stay below q0/2 to decode with its sign.
    q0 = ps.coeff_modulus_bits[0]
    worst = ps.mask_log2_max + 1 + (ps.score_gain - 1) + ps.result_scale_bits + 1
    if worst > q0 - 1:
        raise ParameterError(f"{ps.name}: masked result needs {worst} bits, q0 gives {q0 - 1}")
    # Probe weights w = round(q * 2**p) times 30-bit residue limbs, summed in
    # groups, must stay exact in float64 (see pprm.matching.kernel_numpy).
    if ps.probe_scale_bits > 16:
        raise ParameterError(f"{ps.name}: probe_scale_bits above 16 breaks exact accumulation")
    # The grid must be coarse against decryption noise (which scales like
    # 2**-gallery_scale_bits) and fine against the decision margin.
    if not 8 <= ps.template_grid_bits <= ps.gallery_scale_bits - 10:
        raise ParameterError(f"{ps.name}: template grid must be 8 bits to gallery_scale_bits - 10")
    if not 0 < ps.decision_margin < 0.1:
        raise ParameterError(f"{ps.name}: decision_margin must be in (0, 0.1)")
    return ps


_SEALED_COMMON: dict[str, Any] = {
    # One template per CKKS slot (docs/DESIGN.md section 3).
    "packing": "real",
    # 2**24: gallery encoding scale. docs/DESIGN.md section 9 starts from 2**22;
    # two more bits cut the fresh per-component noise from 5.0e-5 to 1.25e-5
    # (measured at N=8192), which lets the owner round decrypted components
    # back onto the 2**-12 grid below with a 9.8-sigma margin (6.9 sigma after
    # one homomorphic append), so removals never accumulate noise.
    "gallery_scale_bits": 24,
    # 2**15: probe quantisation step; with unit-norm probes |w_k| <= 2**15 and
    # the score lands at scale 2**39 (docs/DESIGN.md section 9 uses the same step).
    "probe_scale_bits": 15,
    # 2**10: mask encoding scale (docs/DESIGN.md section 9); r's encoding error is
    # about 0.025 (std) in absolute terms, which cannot flip the sign of r*(s - tau).
    "mask_scale_bits": 10,
    # r log-uniform in [1, 2**8] (docs/DESIGN.md section 4 suggests 2**10; the two
    # bits went to the gallery scale). Worst slot: 2**8 * 2 * 2**49 = 2**58 < q/2.
    "mask_log2_max": 8,
    # Enrolled components are rounded to multiples of 2**-12 (2.4e-4): the
    # score moves by at most about 7e-5 (std) from the float32 template, far
    # inside the 1e-3 decision margin, and the grid makes removal exact.
    "template_grid_bits": 12,
    # |s - tau| >= 1e-3 must decide exactly (docs/DESIGN.md sections 4 and 8).
    "decision_margin": 1e-3,
}

_SEALED_COMPLEX: dict[str, Any] = {
    **_SEALED_COMMON,
    # Two templates per CKKS slot, real and imaginary parts (docs/DESIGN.md
    # sections 3 and 9): half the RAM, disk and kernel work per template.
    "packing": "complex",
    # 2**9 instead of 2**10 (docs/DESIGN.md section 9 uses 2**9 for complex
    # packing): de-interleaving doubles every score (u = 2*s_A, v = -2i*s_B),
    # so at 2**10 the worst slot would be 2**8 * 2 * 2 * 2**49 = 2**59, at
    # q0/2. One bit less on the mask keeps it at 2**58, the real sets'
    # headroom, and the mask range (hence the leak) unchanged. r's encoding
    # error doubles to 0.05 (std, measured at N=8192; 0.2 at worst), still
    # far from flipping the sign of r*(s - tau) at r >= 1.
    "mask_scale_bits": 9,
}

_LITERALS: tuple[dict[str, Any], ...] = (
    # The production set: N=8192 gives 4096 templates per block; one 60-bit
    # prime (the largest SEAL offers) holds the 2**57.6 worst-case slot
    # (docs/DESIGN.md section 9); log Q = 60 is far under the 214-bit bound.
    {"name": "pprm-sealed-n8192-v1", "poly_modulus_degree": 8192,
     "coeff_modulus_bits": [60], "insecure": False, **_SEALED_COMMON},
    # Same computation at N=4096 (2048 templates per block); log Q = 60 is
    # under the 107-bit bound, so it is a secure choice for small galleries.
    {"name": "pprm-sealed-n4096-v1", "poly_modulus_degree": 4096,
     "coeff_modulus_bits": [60], "insecure": False, **_SEALED_COMMON},
    # Test-only: N=1024 with a 60-bit modulus is far below 128-bit security
    # (the bound would be about 27 bits); it keeps unit tests fast.
    {"name": "INSECURE-sealed-n1024", "poly_modulus_degree": 1024,
     "coeff_modulus_bits": [60], "insecure": True, **_SEALED_COMMON},
    # Complex packing at N=8192: 8192 templates per block (8 KB of RAM per
    # template at d=512). [60, 60]: the data prime as in the real set, plus
    # SEAL's special prime, used only to switch keys after conjugation, so
    # ciphertexts are stored and computed at one prime exactly as before.
    # log Q = 120, under the 214-bit bound.
    {"name": "pprm-sealed-n8192-complex-v1", "poly_modulus_degree": 8192,
     "coeff_modulus_bits": [60, 60], "insecure": False, **_SEALED_COMPLEX},
    # Test-only complex set: N=1024 (1024 templates per block) with the same
    # primes; log Q = 120 is far beyond the N=1024 bound, so it is insecure.
    {"name": "INSECURE-sealed-n1024-complex", "poly_modulus_degree": 1024,
     "coeff_modulus_bits": [60, 60], "insecure": True, **_SEALED_COMPLEX},
)

_REGISTRY: Registry[ParameterSet] = Registry("parameter set", (_validate(lit) for lit in _LITERALS))


def names(*, include_insecure: bool = False) -> list[str]:
    """Names of the registered parameter sets.

    Args:
        include_insecure: also list the test-only ``INSECURE*`` sets.

    Returns:
        Sorted names.
    """
    return _REGISTRY.names(include_insecure=include_insecure)


def get(name: str, *, allow_insecure: bool = False) -> ParameterSet:
    """Look up a parameter set by name.

    Args:
        name: a registered name.
        allow_insecure: permit ``INSECURE*`` sets (tests only).

    Returns:
        The validated set.

    Raises:
        ParameterError: unknown name, or an insecure set without permission.

    Warning:
        Never pass ``allow_insecure=True`` outside tests: those sets offer no
        meaningful security.
    """
    return _REGISTRY.get(name, allow_insecure=allow_insecure)


def by_digest(digest: str, *, allow_insecure: bool = False) -> ParameterSet:
    """Find the registered set with this digest (the downgrade check for peers).

    Raises:
        ParameterError: no allowed set has this digest.
    """
    return _REGISTRY.by_digest(digest, allow_insecure=allow_insecure)
