"""Complex packing: two templates per CKKS slot, end to end.

The complex sets put template A of slot j in the real part and template B in
the imaginary part (positions j and N/2 + j of a block's slot map; layout in
:mod:`pprm.matching.gallery`). The matcher de-interleaves with a public
conjugation key before masking, so each half gets its own masks. These tests
compare encrypted decisions with float64 plaintext decisions on the same
float32 templates and probes, in both halves, and check what must not
change: the matcher holds no secret, free and removed positions never hit,
removal and append stay exact, and a whole State flow works.

Most tests use ``INSECURE-sealed-n1024-complex`` (1024 templates per block);
the fidelity test uses the production set ``pprm-sealed-n8192-complex-v1``.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as seal

from pprm import synthetic
from pprm.crypto import keys, params
from pprm.crypto.context import CkksContext
from pprm.errors import CiphertextError, ParameterError, StateError
from pprm.matching.decide import SealedDecider
from pprm.matching.gallery import EncryptedGallery, pack_columns, unpack_slots
from pprm.matching.owner import GalleryOwner
from pprm.matching.sealed import MaskedResult, SealedMatcher
from pprm.matching.templates import normalise_probe, normalise_templates
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol.card import parse_card
from tests.helpers import (
    INSECURE_SEALED_COMPLEX,
    ScoredWorld,
    new_state,
    orthonormal_probes,
    resolve_all,
    rows_with_scores,
)
from tests.matching.masked_support import masked_values
from tests.matching.test_sealed_matching import _secrets_in

PRODUCTION = "pprm-sealed-n8192-complex-v1"
DIM = 64
THRESHOLDS = (0.3, 0.4, 0.5)
# One full block (1024 positions: both halves) and a partial one: 512 in its
# A half and 164 in its B half, so block 1 has free positions in B only.
N_ROWS = 1700


# -- parameter sets -------------------------------------------------------------

def _literal(base: str, **changes: object) -> dict[str, object]:
    lit = next(dict(x) for x in params._LITERALS if x["name"] == base)
    lit.update(changes)
    return lit


def test_complex_sets_are_registered_and_the_default() -> None:
    ps = params.get(PRODUCTION)
    assert not ps.insecure and ps.packing == "complex"
    assert ps.templates_per_block == ps.poly_modulus_degree == 8192 and ps.slots == 4096
    # [q0, special prime]: data level L = 1, so the kernel and residue layout are unchanged.
    assert ps.coeff_modulus_bits == (60, 60) and ps.data_primes == 1
    # One masked ciphertext per block: A's decision in the real part of a slot, B's in the imaginary.
    assert ps.result_ciphertexts_per_block == 1 and ps.score_gain == 2
    assert params.get(INSECURE_SEALED_COMPLEX, allow_insecure=True).templates_per_block == 1024
    # The production default packs two templates per slot (8 KB per template at d = 512).
    assert params.get(params.DEFAULT_PARAMS) is ps
    real = params.get("pprm-sealed-n8192-v1")
    assert real.packing == "real" and real.templates_per_block == real.slots == 4096
    assert real.result_ciphertexts_per_block == 1
    assert params.by_digest(ps.digest) is ps


@pytest.mark.parametrize(("changes", "match"), [
    ({"packing": "quaternion"}, "packing"),
    ({"coeff_modulus_bits": [60]}, "special prime"),
    ({"coeff_modulus_bits": [60, 50]}, "special prime"),
    # The scores are doubled: a 2**10 mask would put the worst slot at 2**59.
    ({"mask_scale_bits": 10}, "masked result needs"),
    ({"mask_log2_max": 9}, "masked result needs"),
])
def test_complex_literals_are_checked(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        params._validate(_literal(PRODUCTION, **changes))


def test_headroom_check_counts_the_doubling() -> None:
    # The same numbers pass with real packing and fail with complex packing.
    real = params._validate(_literal(PRODUCTION, name="pprm-test-real", packing="real", mask_scale_bits=10))
    assert real.result_scale_bits == 49
    with pytest.raises(ParameterError, match="masked result needs"):
        params._validate(_literal(PRODUCTION, name="pprm-test-cplx", mask_scale_bits=10))


def test_layout_round_trips() -> None:
    ps = params.get(INSECURE_SEALED_COMPLEX, allow_insecure=True)
    cols = np.random.default_rng(0).uniform(-1, 1, (3, ps.templates_per_block))
    packed = pack_columns(cols, ps)
    assert packed.shape == (3, ps.slots) and np.iscomplexobj(packed)
    assert np.array_equal(packed[:, 7], cols[:, 7] + 1j * cols[:, ps.slots + 7])
    assert np.array_equal(unpack_slots(packed, ps), cols)


# -- the world: a complex state with a gallery near three thresholds ---------------

@pytest.fixture
def world(make_world: Callable[..., ScoredWorld]) -> ScoredWorld:
    return make_world(N_ROWS, DIM, THRESHOLDS, seed=77, params=INSECURE_SEALED_COMPLEX)


def _check(world: ScoredWorld, hits: list[int], probe: np.ndarray, tau: float) -> tuple[int, int]:
    """Assert hits == plaintext decisions where |s - tau| >= margin; pairs checked per half."""
    margin = world.state.config.parameter_set.decision_margin
    got = set(hits)
    assert len(got) == len(hits), "a record is reported twice"
    assert got <= set(world.rows), "a hit names no enrolled record"
    checked = [0, 0]
    for rid, s in world.scores(probe).items():
        if abs(s - tau) >= margin:
            checked[world.half_of(rid)] += 1
            assert (rid in got) == (s >= tau), f"record {rid}: s - tau = {s - tau:+.5f}"
    return checked[0], checked[1]


def _decrypt(world: ScoredWorld, result: MaskedResult) -> list[np.ndarray]:
    """Decrypted masked values per block, in position order (A half, then B half)."""
    return masked_values(world.state.ctx, world.secret_key, result)


def test_hits_equal_plaintext_decisions_in_both_halves(world: ScoredWorld) -> None:
    assert [int(b.occupancy().sum()) for b in world.gallery.index.blocks] == [1024, N_ROWS - 1024]
    matcher, decider = world.matcher(), world.decider()
    a_checked = b_checked = 0
    for probe, tau in zip(world.probes, THRESHOLDS, strict=True):
        result = matcher.match(probe, tau)
        # One ciphertext per block: A in the real parts, B in the imaginary parts.
        assert len(result.blocks) == 2 and len(result.ciphertexts) == 2
        hits = decider.hits(result)
        assert 0.3 * N_ROWS < len(hits) < 0.7 * N_ROWS
        a, b = _check(world, hits, probe, tau)
        a_checked += a
        b_checked += b
    # A: 512 + 512 rows, B: 512 + 164 rows, ~2% of pairs inside the margin.
    assert a_checked > 0.95 * 1024 * 3 and b_checked > 0.95 * 676 * 3


def test_free_and_removed_positions_never_hit_in_either_half(world: ScoredWorld) -> None:
    h = world.state.ctx.slots
    block0 = world.gallery.index.blocks[0].slots.copy()
    gone_a, gone_b = int(block0[5]), int(block0[h + 5])  # the two templates of CKKS slot 5
    ref_of = world.gallery.index.references
    refs = (ref_of[gone_a], ref_of[gone_b])
    tau = 0.05  # so low that every occupied position is a hit
    probe = world.probes[0]
    before = world.decider().hits(world.matcher().match(probe, tau))
    assert {gone_a, gone_b} <= set(before)

    for ref, rid in zip(refs, (gone_a, gone_b), strict=True):
        world.owner.remove(ref)
        del world.rows[rid]
        # The removal zeroed one half of the slot; the other half and every
        # other record decrypt exactly to their grid values.
        cols = world.owner._decrypt_block(0)
        occ = world.gallery.index.blocks[0].slots
        for pos in (5, h + 5, 17, h + 17):
            rid_here = int(occ[pos])
            if rid_here < 0:
                assert not cols[:, pos].any()
            else:
                assert np.array_equal(cols[:, pos], world.owner._grid(world.rows[rid_here].astype(np.float64)))
        result = world.matcher().match(probe, tau)
        hits = world.decider().hits(result)
        assert rid not in hits
        _check(world, hits, probe, tau)

    # The masks themselves make free positions negative in both halves, not
    # just the decider's occupancy filter: r = 1, e = -1 gives 2*(0 - tau)*1 - 1.
    # Tolerance 0.1 is far beyond r's encoding error at scale 2**9 (N=1024).
    values = _decrypt(world, result)
    free_halves = [0, 0]
    for blk, vals in zip(world.gallery.index.blocks, values, strict=True):
        free = np.flatnonzero(~blk.occupancy())
        for free_pos in free.tolist():
            free_halves[free_pos // h] += 1
        assert (np.abs(vals[free] - (-2 * tau - 1.0)) < 0.1).all()
    # Block 0: positions 5 (A) and h + 5 (B); block 1: its B half beyond 164.
    assert free_halves == [1, 1 + h - (N_ROWS - 1024 - h)]
    assert values[0][5] < -1.0 and values[0][h + 5] < -1.0


def test_append_fills_the_b_half_of_a_partial_block(world: ScoredWorld) -> None:
    probe = world.probes[1]
    blk = world.gallery.index.blocks[1]
    assert blk.encryptions == 1
    extra = np.stack([probe, -probe, probe + 0.05 * world.probes[2]])  # scores 1.0, -1.0, ~0.9988
    new = world.owner.enroll(extra, ["TWIN", "ANTI", "NEAR"])
    blk = world.gallery.index.blocks[1]
    h = world.state.ctx.slots
    # Appended homomorphically into the free B positions of block 1, no new block.
    assert len(world.gallery.index.blocks) == 2 and blk.encryptions == 2
    assert [world.gallery.index.locate(r) for r in new] == [(1, N_ROWS - 1024 + i) for i in range(3)]
    assert all(world.gallery.index.locate(r)[1] >= h for r in new)
    for rid, row in zip(new, normalise_templates(extra, DIM), strict=True):
        world.rows[rid] = row
    for tau in (0.4, 0.99):
        hits = world.decider().hits(world.matcher().match(probe, tau))
        _check(world, hits, probe, tau)
        assert new[0] in hits and new[1] not in hits
    assert world.decider().hits(world.matcher().match(probe, 0.99)) == [new[0], new[2]]


def test_masks_are_independent_between_halves(tmp_path: Path) -> None:
    state = new_state(tmp_path / "DE", "DE", dim=16, params=INSECURE_SEALED_COMPLEX)
    sk = keys.load_secret_key(state.ctx, state.secret_key_path())
    owner = GalleryOwner(state.ctx, sk, state.gallery())
    ps = state.config.parameter_set
    rows = np.zeros((ps.templates_per_block, 16), dtype=np.float32)
    # Every position scores 0.6 (0.60009 on the 2**-12 grid): equal scores in A and B.
    rows[:, 0] = 0.6
    rows[:, 1] = 0.8
    owner.enroll(rows, [f"S-{i}" for i in range(ps.templates_per_block)])
    probe = np.zeros(16, dtype=np.float32)
    probe[0] = 1.0
    result = state.matcher().match(probe, 0.4)
    (values,) = masked_values(state.ctx, sk, result)
    a, b = values[:ps.slots], values[ps.slots:]
    r_a, r_b = a / (2 * 0.2), b / (2 * 0.2)  # = r (plus small noise) in each half
    for r in (r_a, r_b):
        assert r.min() > 0.9 and r.max() < 2.0**ps.mask_log2_max * 1.1
        assert r.max() / r.min() > 2.0 ** (ps.mask_log2_max - 1)
    # No two positions share a mask: not within a half, not across the two
    # templates of one CKKS slot, and the halves are uncorrelated.
    both = np.round(np.concatenate([a, b]), 6)
    assert np.unique(both).size > 0.99 * both.size
    assert (np.abs(a - b) > 1e-3).mean() > 0.99
    # 512 independent pairs: corr has std ~0.044; 0.25 is over 5 sigma.
    assert abs(float(np.corrcoef(np.log(r_a), np.log(r_b))[0, 1])) < 0.25


def test_matcher_holds_no_secret_and_needs_no_private_dir(world: ScoredWorld, tmp_path: Path) -> None:
    sk_bytes = Path(world.state.secret_key_path()).read_bytes()
    assert "Decryptor" in _secrets_in(world.decider(), sk_bytes)
    private = Path(world.state.dir, "private")
    vault = tmp_path / "vault"
    shutil.move(private, vault)
    try:
        opened = State.open(world.state.dir)
        matcher = opened.matcher()
        with pytest.raises(StateError):
            keys.load_secret_key(opened.ctx, opened.secret_key_path())
        results = [matcher.match(p, t) for p, t in zip(world.probes, THRESHOLDS, strict=True)]
        assert _secrets_in(matcher, sk_bytes) == []
        # The matcher does hold the (public) conjugation key it needs.
        assert isinstance(matcher.scorer._conj_key, seal.GaloisKeys)
        assert not private.exists()
    finally:
        shutil.move(vault, private)
    decider = world.decider()
    for result, probe, tau in zip(results, world.probes, THRESHOLDS, strict=True):
        _check(world, decider.hits(result), probe, tau)


def test_missing_conjugation_key_and_short_results_are_refused(
        world: ScoredWorld, sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey]) -> None:
    with pytest.raises(ParameterError, match="conjugation key"):
        SealedMatcher(world.state.ctx, world.gallery)
    result = world.matcher().match(world.probes[0], 0.4)
    # Dropping a block's ciphertext (any one) is refused, not read as "no hits".
    for cts in (result.ciphertexts[::2], result.ciphertexts[:-1]):
        with pytest.raises(CiphertextError, match="number of ciphertexts"):
            world.decider().hits(dataclasses.replace(result, ciphertexts=cts))
    key = Path(world.state.path("ckks", "galois.key"))
    blob = key.read_bytes()
    key.unlink()
    try:
        with pytest.raises(StateError, match="conjugation key"):
            world.state.matcher()
    finally:
        key.write_bytes(blob)
    # A real-packing set has no special prime, hence no conjugation key.
    with pytest.raises(StateError, match="special prime"):
        keys.conjugation_key_bytes(sealed_ctx, sealed_keypair[0])


# -- the whole protocol on a complex set ----------------------------------------------

def test_state_flow_on_the_complex_set(tmp_path: Path) -> None:
    de = new_state(tmp_path / "DE", "DE", params=INSECURE_SEALED_COMPLEX)
    fr = new_state(tmp_path / "FR", "FR", params=INSECURE_SEALED_COMPLEX)
    card = parse_card(de.card_bytes, allow_insecure=True)
    ps = de.config.parameter_set
    assert card.params == INSECURE_SEALED_COMPLEX and card.params_digest == ps.digest
    assert params.by_digest(card.params_digest, allow_insecure=True) is ps
    assert Path(de.path("ckks", "galois.key")).is_file() and Path(de.path("ckks", "public.key")).is_file()
    de.trust(fr.card_bytes)
    fr.trust(de.card_bytes)
    # 1200 templates: one full block and a partial one; the mate sits in the B half.
    gal = synthetic.make_gallery(1200, dim=512, seed=5, prefix="DE")
    ks = KeyService(de)
    ks.enroll(gal.templates, gal.references)
    index = 700
    assert de.gallery().index.locate(index)[1] >= ps.slots
    tau = de.config.threshold
    unit = normalise_templates(gal.templates, 512).astype(np.float64)
    for probe, want in ((synthetic.mate_probe(gal, index, 3), [gal.references[index]]),
                        (synthetic.impostor_probe(512, 11), [])):
        s = unit @ normalise_probe(probe, 512).astype(np.float64)
        assert not (np.abs(s - tau) < 2e-3).any()  # the data are decisive
        assert [gal.references[i] for i in np.flatnonzero(s >= tau)] == want
        req = Requester(fr)
        answer = Responder(de).answer(req.query("DE", probe, "CASE-1", "serious-crime"))
        opened = req.open(answer)
        assert opened.sender == "DE" and opened.hit is bool(want)
        assert resolve_all(fr, ks, answer, opened.candidates) == want
    # Removal through the key service, then the removed mate no longer hits.
    ks.remove(gal.references[index])
    req = Requester(fr)
    probe = synthetic.mate_probe(gal, index, 3)
    opened = req.open(Responder(de).answer(req.query("DE", probe, "CASE-2", "serious-crime")))
    assert not opened.hit


# -- decision fidelity on the production complex set -----------------------------------

def test_encrypted_decisions_match_plaintext_near_the_threshold_complex(
        tmp_path: Path) -> None:
    """As tests/matching/test_sealed_fidelity.py, on ``pprm-sealed-n8192-complex-v1``.

    3 full blocks of 8192 (24,576 templates, both halves of every slot
    used, d = 512) x 5 probes = 122,880 pairs, every score drawn uniformly
    from [tau - 0.02, tau + 0.02]; fresh masks per query.
    """
    ps = params.get(PRODUCTION)
    ctx = CkksContext(ps)
    sk, pk = keys.generate(ctx)
    key_path = tmp_path / "galois.key"
    key_path.write_bytes(keys.conjugation_key_bytes(ctx, sk))
    gallery = EncryptedGallery(str(tmp_path / "gallery"), ps, keys.key_id_of(keys.public_key_bytes(ctx, pk)), 512)
    owner = GalleryOwner(ctx, sk, gallery)
    thresholds = (0.3, 0.4, 0.5, 0.3, 0.4)
    rng = np.random.default_rng(20240602)
    n = 3 * ps.templates_per_block
    exact_probes = orthonormal_probes(len(thresholds), 512, rng)
    probes = exact_probes.astype(np.float32)
    a = np.stack([rng.uniform(t - 0.02, t + 0.02, n) for t in thresholds], axis=1)
    templates = rows_with_scores(exact_probes, a, rng).astype(np.float32)
    ids = np.asarray(owner.enroll(templates, [f"F-{i:06d}" for i in range(n)]))
    assert len(gallery.index.blocks) == 3 and all(b.occupancy().all() for b in gallery.index.blocks)
    row_of = {int(rid): i for i, rid in enumerate(ids)}
    in_b = {rid: pos >= ps.slots for blk in gallery.index.blocks for pos, rid in enumerate(blk.slots.tolist())}
    half = np.asarray([in_b[int(r)] for r in ids])
    unit = normalise_templates(templates, 512).astype(np.float64)

    matcher = SealedMatcher(ctx, gallery, keys.load_conjugation_key(ctx, str(key_path)))
    decider = SealedDecider(ctx, sk, gallery)
    margin = ps.decision_margin
    checked = [0, 0]
    near = flips_near = 0
    worst_flip = 0.0
    for probe, tau in zip(probes, thresholds, strict=True):
        s = unit @ normalise_probe(probe, 512).astype(np.float64)
        plain = s >= tau
        enc = np.zeros(n, dtype=bool)
        enc[[row_of[r] for r in decider.hits(matcher.match(probe, tau))]] = True
        far = np.abs(s - tau) >= margin
        wrong = far & (enc != plain)
        assert not wrong.any(), (
            f"tau={tau}: {int(wrong.sum())} decisions differ at |s - tau| >= {margin} "
            f"({int((wrong & ~half).sum())} in A, {int((wrong & half).sum())} in B)")
        checked[0] += int((far & ~half).sum())
        checked[1] += int((far & half).sum())
        near += int((~far).sum())
        flipped = ~far & (enc != plain)
        flips_near += int(flipped.sum())
        if flipped.any():
            worst_flip = max(worst_flip, float(np.abs(s - tau)[flipped].max()))
    print(f"\nfidelity ({ps.name}): {sum(checked)} pairs with |s - tau| >= {margin} all agree "
          f"(A {checked[0]}, B {checked[1]}); {flips_near} of {near} inside the margin flipped "
          f"(largest |s - tau| of a flip: {worst_flip:.1e})")
    assert sum(checked) >= 100_000 and min(checked) >= 50_000
    assert flips_near < 0.25 * near


def test_conjugation_key_is_bound_to_the_cards_key_id(tmp_path) -> None:
    from pprm.errors import StateError

    a = new_state(tmp_path / "a", "FR", params=INSECURE_SEALED_COMPLEX, dim=16)
    b = new_state(tmp_path / "b", "DE", params=INSECURE_SEALED_COMPLEX, dim=16)
    assert a.conjugation_key() is not None
    # Another state's (valid) conjugation key is refused: it is not covered by a's key id.
    (tmp_path / "a" / "ckks" / "galois.key").write_bytes((tmp_path / "b" / "ckks" / "galois.key").read_bytes())
    with pytest.raises(StateError, match="key id"):
        a.conjugation_key()
    with pytest.raises(StateError, match="key id"):
        a.matcher()
    assert b.conjugation_key() is not None
