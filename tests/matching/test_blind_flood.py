"""The flood polynomial: one integer per coefficient, uniform on [-2**k, 2**k), consistent across primes."""

from __future__ import annotations

import numpy as np
import pytest

from pprm.crypto.context import BlindContext
from pprm.matching.flood import uniform_residues


@pytest.fixture(scope="module")
def moduli(blind_ctx: BlindContext) -> tuple[int, ...]:
    return blind_ctx.moduli


def _crt(res: np.ndarray, moduli: tuple[int, ...]) -> list[int]:
    big = 1
    for q in moduli:
        big *= q
    parts = [(big // q) * pow(big // q, -1, q) for q in moduli]
    out = []
    for k in range(res.shape[1]):
        v = sum(int(res[j, k]) * parts[j] for j in range(len(moduli))) % big
        out.append(v - big if v > big // 2 else v)
    return out


@pytest.mark.parametrize("bits", [10, 63, 64, 65, 144])
def test_flood_values_are_one_integer_in_range(moduli: tuple[int, ...], bits: int) -> None:
    res = uniform_residues(bits, 4096, moduli)
    assert res.shape == (len(moduli), 4096) and all(int(res[j].max()) < q for j, q in enumerate(moduli))
    vals = np.array([float(v) for v in _crt(res, moduli)]) / 2.0**bits
    # Every residue row is the same integer (CRT lands in range), spread over the whole interval.
    assert vals.min() >= -1.0 and vals.max() < 1.0
    assert vals.min() < -0.95 and vals.max() > 0.95
    assert abs(vals.mean()) < 0.05 and abs(vals.std() - 3**-0.5) < 0.02


def test_flood_is_fresh_every_time(moduli: tuple[int, ...]) -> None:
    assert not np.array_equal(uniform_residues(144, 64, moduli), uniform_residues(144, 64, moduli))
