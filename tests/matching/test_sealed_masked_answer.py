"""The packed masked answer end to end: the matcher's masking and packing, the key service's decisions.

* Planted pairs: score ciphertexts made directly (a one-component "gallery"
  whose slots hold chosen scores, probe weight 2**15), so scores sit exactly
  at ``tau +- margin`` and ``tau +- 2*margin``, masked with the extreme masks
  (r = 1 and r = 2**8, e at its bound against the sign), on the test set and
  the production set, both packings. With complex packing the other half of
  each slot is driven to extreme scores under the opposite extreme mask, to
  show that nothing crosses between the real and imaginary parts.
* The cap: every slot at the mask cap with the largest |s - tau| still decrypts.
* Random pairs: decisions against numpy's float64 scores of the same
  templates and probes (0 disagreements where |s - tau| >= margin).
* Malformed or truncated packed answers are refused with CiphertextError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm.crypto import keys, params
from pprm.crypto.context import CkksContext
from pprm.crypto.masked_codec import CIPHERTEXTS_PER_BLOCK, MaskedDecryptor, masked_layout
from pprm.errors import CiphertextError
from pprm.matching import sealed
from pprm.matching.decide import SealedDecider
from pprm.matching.mask import Masks
from pprm.matching.owner import GalleryOwner
from pprm.matching.sealed import BlockScorer, SealedMatcher
from pprm.matching.templates import normalise_probe, normalise_templates
from tests.helpers import (
    INSECURE_SEALED,
    INSECURE_SEALED_COMPLEX,
    ScoredWorld,
    new_state,
    orthonormal_probes,
    rows_with_scores,
)

SETS = [INSECURE_SEALED_COMPLEX, "pprm-sealed-n8192-complex-v1", INSECURE_SEALED, "pprm-sealed-n8192-v1"]
R_MAX = 2.0**8  # the sets' mask_log2_max
# Planted slots: every 8th. The rest carry r = 1, so even with r = 2**8 in
# both halves of the planted slots the block's mean mask stays under the cap.
PLANT_EVERY = 8


@dataclasses.dataclass
class Keyed:
    ctx: CkksContext
    sk: seal.SecretKey
    scorer: BlockScorer

    @property
    def ps(self) -> params.ParameterSet:
        return self.ctx.params

    def block(self, scores: np.ndarray) -> np.ndarray:
        """A one-component block whose score ciphertext (probe weight 2**15) holds ``scores`` by position."""
        ps = self.ps
        h = ps.slots
        slots = scores[:h] + 1j * scores[h:] if ps.packing == "complex" else scores
        ct = seal.Ciphertext()
        seal.Encryptor(self.ctx.seal, self.sk).encrypt_symmetric(self.ctx.encode(slots, ps.gallery_scale_bits), ct)
        return self.ctx.to_residues(ct)[None]

    def signs(self, blocks: Sequence[np.ndarray], tau: float) -> np.ndarray:
        w = np.array([2**self.ps.probe_scale_bits], dtype=np.int64)
        occ = np.ones(self.ps.templates_per_block, dtype=bool)
        out = self.scorer.run(len(blocks), lambda b: blocks[b], lambda _b: occ, w, tau)
        assert all(len(cts) == CIPHERTEXTS_PER_BLOCK for cts in out)
        opener = MaskedDecryptor(self.ctx, seal.Decryptor(self.ctx.seal, self.sk))
        return opener.signs([cts[0] for cts in out])


def _keyed(name: str, tmp_path_factory: pytest.TempPathFactory) -> Keyed:
    ctx = CkksContext(params.get(name, allow_insecure=True))
    sk, _pk = keys.generate(ctx)
    conj = None
    if ctx.params.packing == "complex":
        path = tmp_path_factory.mktemp("conj") / "galois.key"
        path.write_bytes(keys.conjugation_key_bytes(ctx, sk))
        conj = keys.load_conjugation_key(ctx, str(path))
    return Keyed(ctx, sk, BlockScorer(ctx, conj))


@pytest.fixture(scope="module", params=SETS)
def keyed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Keyed:
    return _keyed(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=[s for s in SETS if "complex" in s])
def keyed_complex(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Keyed:
    return _keyed(request.param, tmp_path_factory)


def _fixed_masks(monkeypatch: pytest.MonkeyPatch, keyed: Keyed, r: np.ndarray, e: np.ndarray) -> list[int]:
    """Make the matcher use these masks (by position), after checking they respect the layout's cap.

    The native backend draws masks in C; the scorer is sent through the
    Python draw here (its masking still runs in C), so that the planted
    masks are the ones used. Returns a list that counts the draws.
    """
    used: list[int] = []

    def fixed(parts: Sequence[np.ndarray], p: params.ParameterSet, cap: float) -> list[Masks]:
        n = parts[0].size
        rs = [r[i * n:(i + 1) * n] for i in range(len(parts))]
        assert float(np.sqrt(np.sum([x * x for x in rs], axis=0)).mean()) <= cap
        used.append(1)
        return [Masks(rs[i], e[i * n:(i + 1) * n]) for i in range(len(parts))]

    monkeypatch.setattr(sealed, "draw_block_masks", fixed)
    monkeypatch.setattr(keyed.scorer, "_drawer", None)
    return used


def _planted(ps: params.ParameterSet, tau: float, r_near: float, r_far: float, near_half: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, masks and worst-case noise for one block.

    Planted slots: the ``near_half`` half of the slot scores ``tau + k * margin``
    for k in (1, -1, 2, -2) under ``r_near``; the other half (complex packing)
    scores -1 or +1 under ``r_far``. Other slots: mild scores under r = 1.
    """
    h, n = ps.slots, ps.templates_per_block
    m = ps.decision_margin
    scores = tau + rng.uniform(0.01, 0.5, n) * rng.choice([-1.0, 1.0], n)
    r = np.ones(n)
    planted = np.flatnonzero(np.arange(h) % PLANT_EVERY == 0)
    near = planted + near_half * h
    scores[near] = tau + m * np.resize([1.0, -1.0, 2.0, -2.0], near.size)
    r[near] = r_near
    if ps.packing == "complex":
        far = planted + (1 - near_half) * h
        scores[far] = np.resize([-1.0, 1.0], far.size)
        r[far] = r_far
    # e at its bound, against the sign of s - tau: the hardest noise the masks allow.
    e = -np.sign(scores - tau) * r * m / 4
    return scores, r, e


@pytest.mark.parametrize(("r_near", "r_far"), [(1.0, 1.0), (R_MAX, R_MAX), (1.0, R_MAX), (R_MAX, 1.0)])
def test_planted_pairs_at_the_margin_decide_exactly_under_extreme_masks(
        keyed: Keyed, monkeypatch: pytest.MonkeyPatch, r_near: float, r_far: float) -> None:
    ps = keyed.ps
    rng = np.random.default_rng(int(r_near) * 7 + int(r_far))
    halves = (0, 1) if ps.packing == "complex" else (0,)
    for tau in (0.4, 0.3):
        for near_half in halves:
            scores, r, e = _planted(ps, tau, r_near, r_far, near_half, rng)
            used = _fixed_masks(monkeypatch, keyed, r, e)
            (signs,) = keyed.signs([keyed.block(scores)], tau)
            assert used, "the planted masks were not used"
            want = scores > tau
            assert np.array_equal(signs, want), (
                f"{ps.name} tau={tau} r=({r_near}, {r_far}): {int((signs != want).sum())} wrong, at "
                f"s - tau = {np.unique(np.round((scores - tau)[signs != want], 6))[:6]}")


@pytest.mark.parametrize("share", [1.0, 0.5, 0.0])
def test_the_largest_values_the_cap_allows_still_decrypt(
        keyed: Keyed, monkeypatch: pytest.MonkeyPatch, share: float) -> None:
    ps = keyed.ps
    cap = masked_layout(ps, keyed.ctx.moduli[0]).rho_cap * (1 - 1e-9)
    n, h = ps.templates_per_block, ps.slots
    # Every slot at the cap, with the mask's weight ``share`` in the A half. The
    # same score everywhere makes the real parts a constant polynomial, whose
    # one coefficient is the whole slot value: with share = 1 and s - tau = -1.99
    # it reaches 2 * cap * 1.99 = 353 at N=8192 (x 5 * 2**48, just under q0/2),
    # so a packing gain one larger than the layout's would wrap and fail here.
    r = np.full(n, 1.0)
    if ps.packing == "complex":
        # r_A**2 + r_B**2 = cap**2 with both at least 1.
        r[:h] = np.sqrt(1.0 + share * (cap * cap - 2.0))
        r[h:] = np.sqrt(1.0 + (1.0 - share) * (cap * cap - 2.0))
    else:
        r[:] = cap
    for tau, s in ((0.99, -1.0), (0.01, 1.0)):
        scores = np.full(n, s)
        e = np.sign(scores - tau) * r * ps.decision_margin / 4
        used = _fixed_masks(monkeypatch, keyed, r, e)
        (signs,) = keyed.signs([keyed.block(scores)], tau)
        assert used, "the planted masks were not used"
        assert np.array_equal(signs, scores > tau)


def test_a_block_of_free_positions_never_hits(keyed: Keyed) -> None:
    # Both halves carry r = 1, e = -1 everywhere: b = r_A - r_B is zero.
    ps = keyed.ps
    w = np.array([2**ps.probe_scale_bits], dtype=np.int64)
    block = keyed.block(np.zeros(ps.templates_per_block))
    (cts,) = keyed.scorer.run(1, lambda _b: block, lambda _b: np.zeros(ps.templates_per_block, dtype=bool),
                              w, 0.05)
    signs = MaskedDecryptor(keyed.ctx, seal.Decryptor(keyed.ctx.seal, keyed.sk)).signs(cts)
    assert not signs.any()


# -- random pairs against numpy ---------------------------------------------------------

def test_random_pairs_agree_with_numpy_scores(tmp_path: Path) -> None:
    dim, blocks, spread = 32, 24, 0.02
    thresholds = (0.3, 0.4, 0.5, 0.35)
    state = new_state(tmp_path / "DE", "DE", dim=dim, params=INSECURE_SEALED_COMPLEX)
    ps = state.config.parameter_set
    sk = keys.load_secret_key(state.ctx, state.secret_key_path())
    gallery = state.gallery()
    owner = GalleryOwner(state.ctx, sk, gallery)
    rng = np.random.default_rng(2025)
    n = blocks * ps.templates_per_block
    exact_probes = orthonormal_probes(len(thresholds), dim, rng)
    a = np.stack([rng.uniform(t - spread, t + spread, n) for t in thresholds], axis=1)
    templates = rows_with_scores(exact_probes, a, rng).astype(np.float32)
    ids = np.asarray(owner.enroll(templates, [f"R-{i:06d}" for i in range(n)]))
    row_of = {int(rid): i for i, rid in enumerate(ids)}
    unit = normalise_templates(templates, dim).astype(np.float64)
    matcher = SealedMatcher(state.ctx, gallery, state.conjugation_key())
    decider = SealedDecider(state.ctx, sk, gallery)
    margin = ps.decision_margin
    checked = 0
    for probe, tau in zip(exact_probes.astype(np.float32), thresholds, strict=True):
        s = unit @ normalise_probe(probe, dim).astype(np.float64)
        result = matcher.match(probe, tau)
        assert len(result.ciphertexts) == blocks and result.nbytes == 8 * n  # 8 bytes per template
        enc = np.zeros(n, dtype=bool)
        enc[[row_of[r] for r in decider.hits(result)]] = True
        far = np.abs(s - tau) >= margin
        assert not (far & (enc != (s >= tau))).any(), f"tau={tau}: decisions differ at |s - tau| >= {margin}"
        checked += int(far.sum())
    assert checked > 0.9 * n * len(thresholds)


# -- refusals ----------------------------------------------------------------------------

def test_malformed_or_truncated_answers_are_refused(make_world: Callable[..., ScoredWorld]) -> None:
    world = make_world(1100, 16, (0.4,), seed=5, params=INSECURE_SEALED_COMPLEX)
    result = world.matcher().match(world.probes[0], 0.4)
    decider = world.decider()
    assert len(decider.hits(result)) > 0
    first = result.ciphertexts[0]
    lay = masked_layout(world.state.ctx.params, world.state.ctx.moduli[0])
    words = np.frombuffer(first, "<u8")
    transparent = (words & np.uint64((1 << lay.c0_bits) - 1)).astype("<u8").tobytes()
    for bad in (first[:100], first[:-1], first + b"\x00" * 8, b"", transparent, cast(Any, "text")):
        with pytest.raises(CiphertextError) as exc:
            decider.hits(dataclasses.replace(result, ciphertexts=(bad, *result.ciphertexts[1:])))
        assert "\n" not in str(exc.value)
    with pytest.raises(CiphertextError, match="number of ciphertexts"):
        decider.hits(dataclasses.replace(result, ciphertexts=result.ciphertexts[:1]))


def test_a_block_whose_draw_passes_the_cap_is_masked_again_with_fresh_words(
        keyed_complex: Keyed, monkeypatch: pytest.MonkeyPatch) -> None:
    keyed = keyed_complex
    drawer = keyed.scorer._drawer
    if drawer is None:
        pytest.skip("masks are drawn in C on the native backend only")
    real = drawer.fresh_words
    calls: list[int] = []

    def first_over_cap(blocks: int) -> np.ndarray:
        words = np.array(real(blocks))
        if not calls:  # the group's draw: block 0 gets uniforms next to 1, r = 2**8 everywhere
            words[0] = np.uint64(2**64 - 1)
        calls.append(blocks)
        return words

    monkeypatch.setattr(drawer, "fresh_words", first_over_cap)
    ps = keyed.ps
    scores = np.random.default_rng(3).uniform(-0.5, 0.9, ps.templates_per_block)
    signs = keyed.signs([keyed.block(scores), keyed.block(scores[::-1].copy())], 0.4)
    assert calls == [2, 1], "the refused block was not drawn again on its own"
    far = np.abs(scores - 0.4) >= ps.decision_margin
    assert np.array_equal(signs[0][far], (scores > 0.4)[far])
    assert np.array_equal(signs[1][far[::-1]], (scores[::-1] > 0.4)[far[::-1]])
