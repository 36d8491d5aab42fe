"""draw_block_masks: the per-block cap the packed masked answer relies on."""

from __future__ import annotations

import numpy as np
import pytest

from pprm.crypto import params
from pprm.crypto.context import CkksContext
from pprm.crypto.masked_codec import masked_layout
from pprm.errors import ParameterError
from pprm.matching import mask
from pprm.matching.mask import draw_block_masks
from tests.helpers import INSECURE_SEALED_COMPLEX


def _rho_mean(masks: list[mask.Masks]) -> float:
    return float(np.sqrt(np.sum([m.r * m.r for m in masks], axis=0)).mean())


@pytest.mark.parametrize("name", ["pprm-sealed-n8192-complex-v1", "pprm-sealed-n8192-v1", INSECURE_SEALED_COMPLEX])
def test_masks_stay_under_the_layouts_cap(name: str) -> None:
    ps = params.get(name, allow_insecure=True)
    cap = masked_layout(ps, CkksContext(ps).moduli[0]).rho_cap
    parts = [np.ones(ps.slots, dtype=bool)] * ps.score_gain
    for _ in range(20):
        masks = draw_block_masks(parts, ps, cap)
        assert len(masks) == ps.score_gain
        assert _rho_mean(masks) <= cap
        for m in masks:
            assert (m.r >= 1.0).all() and (m.r <= 2.0**ps.mask_log2_max).all()
            assert (np.abs(m.e) <= m.r * ps.decision_margin / 4).all()


def test_parts_are_drawn_independently_with_their_own_padding() -> None:
    ps = params.get(INSECURE_SEALED_COMPLEX, allow_insecure=True)
    occ_a = np.ones(ps.slots, dtype=bool)
    occ_b = np.arange(ps.slots) < 100
    a, b = draw_block_masks([occ_a, occ_b], ps, 1e9)
    assert not np.intersect1d(a.r, b.r[:100]).size
    assert (b.r[100:] == 1.0).all() and (b.e[100:] == -1.0).all()


def test_a_draw_over_the_cap_is_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    ps = params.get(INSECURE_SEALED_COMPLEX, allow_insecure=True)
    occ = [np.ones(ps.slots, dtype=bool)] * 2
    calls: list[int] = []
    real = mask.draw_masks

    def counting(occupied: np.ndarray, p: mask.MaskParams) -> mask.Masks:
        calls.append(1)
        m = real(occupied, p)
        # The first two draws (one block, two parts) come out at the top of the range.
        return mask.Masks(np.full_like(m.r, 256.0), m.e) if len(calls) <= 2 else m

    monkeypatch.setattr(mask, "draw_masks", counting)
    masks = draw_block_masks(occ, ps, 120.0)
    assert len(calls) == 4 and _rho_mean(masks) <= 120.0


def test_an_unreachable_cap_is_an_error() -> None:
    ps = params.get(INSECURE_SEALED_COMPLEX, allow_insecure=True)
    # rho >= sqrt(2) always (r >= 1 in both parts).
    with pytest.raises(ParameterError, match="cap"):
        draw_block_masks([np.ones(ps.slots, dtype=bool)] * 2, ps, 1.0)
