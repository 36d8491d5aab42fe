"""Seeded synthetic face templates with realistic score statistics.

Stands apart from the crypto stack, like ``pprm.face``: the demo, tests and
benchmarks use it instead of real biometric data.

Model: every identity has a centre drawn uniformly on the unit sphere; a
template of that identity is ``normalise(c + n)`` with ``n`` Gaussian of
squared norm ``v`` drawn from ``[0.1, 0.9]``. Two templates of one identity
then score about ``1/sqrt((1+v1)(1+v2))``, i.e. 0.53-0.91, plus a small cross
term from the two noise vectors (measured at d = 512: 99% of genuine pairs in
[0.5, 0.92], minimum about 0.43), like ArcFace genuine pairs; templates of
different identities score about ``0 +- 1/sqrt(d)`` (0 +- 0.044 at d = 512).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SyntheticGallery", "unit_vectors", "samples_of", "make_gallery", "mate_probe",
           "impostor_probe", "GENUINE_NOISE"]

# Squared noise norm range per template; gives genuine scores of about 0.5-0.92.
GENUINE_NOISE = (0.1, 0.9)


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent points uniform on the unit sphere in ``dim`` dimensions (float64)."""
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def samples_of(centres: np.ndarray, rng: np.random.Generator,
               noise: tuple[float, float] = GENUINE_NOISE) -> np.ndarray:
    """One noisy, normalised float32 template per centre."""
    n, dim = centres.shape
    v = rng.uniform(noise[0], noise[1], size=n)
    g = rng.standard_normal((n, dim)) * np.sqrt(v / dim)[:, None]
    x = centres + g
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class SyntheticGallery:
    """Templates with references, and the identity centres behind them."""

    templates: np.ndarray = field(repr=False)
    references: list[str] = field(repr=False)
    centres: np.ndarray = field(repr=False)
    seed: int

    def __len__(self) -> int:
        return len(self.references)


def make_gallery(n: int, dim: int = 512, seed: int = 0, prefix: str = "REF") -> SyntheticGallery:
    """A gallery of ``n`` distinct identities, one template each.

    Args:
        n: number of templates.
        dim: template dimension.
        seed: generator seed; equal seeds give equal galleries.
        prefix: references are ``f"{prefix}-{i:07d}"``.

    Returns:
        The gallery.
    """
    rng = np.random.default_rng(seed)
    centres = unit_vectors(n, dim, rng)
    return SyntheticGallery(samples_of(centres, rng), [f"{prefix}-{i:07d}" for i in range(n)],
                            centres, seed)


def mate_probe(gallery: SyntheticGallery, index: int, seed: int) -> np.ndarray:
    """A fresh template of the identity enrolled at ``index`` (a planted mate)."""
    rng = np.random.default_rng([gallery.seed, index, seed])
    return samples_of(gallery.centres[index:index + 1], rng)[0]


def impostor_probe(dim: int, seed: int) -> np.ndarray:
    """A template of an identity enrolled nowhere."""
    rng = np.random.default_rng([0x1A5, seed])
    return samples_of(unit_vectors(1, dim, rng), rng)[0]
