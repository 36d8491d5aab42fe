"""Blind profile: a hostile requester's crafted probes and keys (docs/DESIGN.md section 4, trap 3).

Each test plays one attack as a malicious requester: its own client, pprm's
own exact encoder (:mod:`pprm.crypto.encoding`) and SEAL's symmetric
encryption, well-formed ciphertexts that pass every format check, keys built
with pprm's and SEAL's own objects and edited only in this process. The
responder's answer must carry no more than an honest probe's would:

* what an honest *unrelated* probe gets back is "no hit" in every slot except
  its genuine matches (score >= tau);
* so in every slot whose window, projected onto the reals and normalised,
  is not a genuine match, the answer's sign must not depend on the gallery:
  whatever the responder puts there (a "no hit", or a fair coin), it must not
  follow the attacker's own target (its own threshold, its own window, a
  template component).

Not asserted: in slots whose normalised window *is* a genuine match, a
crafted probe may be answered at a threshold above tau (the design answers
any real window as its unit probe at a threshold no lower than tau), so a
requester can grade its genuine matches; it learns nothing about the rest.

The values and decisions of honest probes are covered by
test_blind_fidelity.py, test_blind_privacy.py and test_blind_noise.py and not
repeated here.

Attacks, and what each test asserts:

1. imaginary channel (production set, one block of 4,000 templates; C = 1
   and 1000): the probe ``i*C*e_K``. The estimate ``-tau*Im/(C*Re)`` of
   component K is rank-uncorrelated with the true ``g[j, K]``, and the signs
   of the templates an honest ``e_K`` would hit are no likelier positive
   than the others' (the probe's real part is zero: it has no genuine match).
2. scaled probes ``c*q`` (test set, 4 blocks), c in +-2, +-10, +-1000: among the
   slots where the unit probe ``sign(c)*q`` has no genuine match, the signs do
   not follow the attacker's own threshold ``sign(c*s - tau)``. ``c = -1`` is an
   honest unit probe and decides exactly. A scale chosen so that the window
   norm wraps around the modulus to exactly 1 gets nothing more either.
3. unequal replicas (production set): replicas 8..15 of the probe scaled by
   ``1 + (m - 7)/4``. Among slots whose normalised window has no genuine
   match, the signs do not follow the attacker's per-window target; slots
   whose window lies in the unscaled replicas decide exactly.
4. complex probe ``a*e_0 + i*b*e_K`` with ``a**2 - b**2 = 1`` (b = 100): its
   bilinear "norm" is 1; nothing about component K comes back and the signs
   do not follow ``sign(a*g_0 - tau)``.
5. degenerate and malformed keys (test set): a public key with ``b = 0`` (or
   zero modulo one prime, constant, ``b = P``, out of range, mis-sized), Galois
   keys with a zero part, without the conjugation or with an extra element,
   a missing, zero or misplaced relinearisation key, keys at the wrong level
   or of another parameter set, truncated, oversized or garbage blobs: each is
   refused by ``load_announced`` with ``CiphertextError`` (a ``PprmError``),
   never an untyped ``RuntimeError``. Rigged keys (well-formed, of another
   secret key: no format check can tell) let a scaled probe read nothing.
   The node-level refusal (a signed announcement, the responder's state
   unchanged) is in tests/node/test_blind_key_refusal.py.
6. linking by fingerprint (test set, 4 blocks): the same crafted probe sent
   twice; a block's sign pattern in query 1 is no closer to the same
   database block's pattern in query 2 than to another block's.
7. oversized encryption noise: a hand-built ciphertext of an honest-looking
   probe with noise ~2**76 per coefficient. The decrypted values are
   rank-uncorrelated with the true scores and with the attacker's effective
   scores (it knows its noise), and the signs do not follow its effective
   target.

Statistics. The data (galleries, probes) come from fixed seeds; the crypto
randomness (masks, floods, encryptions, slot layouts, block orders) is fresh,
so every statistical assertion states its null hypothesis and its
false-alarm rate, at most 1.5e-8 per assertion:

* independence of the signs from a target (:func:`independent`): H0 is that
  the signs of the slots compared are exchangeable, whatever the templates
  in them: independent coins of one bias, or all alike. Given K positives
  among N slots, the number of positives among the n slots the target
  marks is then hypergeometric; the test is Fisher's exact test, two-sided
  (twice the smaller tail), failing at p < 1e-8.
* no rank correlation (:func:`uncorrelated`): under H0 (independence)
  Spearman's rho is distribution-free with variance 1/(n - 1) and
  asymptotically normal; ``|rho| > 6/sqrt(n - 1)`` has probability about 2e-9.
* linking: see the test.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import pytest
import tenseal.sealapi as seal
import zstandard

from pprm.crypto import blind_keys, seal_stream
from pprm.crypto.answer_codec import decode_answer
from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients
from pprm.errors import CiphertextError, PprmError
from pprm.matching.blind import BlindMatcher, answer_scale
from pprm.matching.diagonals import BlindDatabase, build_database
from tests.conftest import blind_setup
from tests.helpers import (
    INSECURE_BLIND,
    INSECURE_BLIND_REAL,
    PROD_BLIND,
    PROD_BLIND_REAL,
    load_switching_keys,
    noise_bits,
    plaintext_residues,
    spearman,
)

Keys = blind_keys.EvaluationKeys

TAU = 0.4
MARGIN = 1e-3
K = 5  # the template component the imaginary and complex channels read
PROD_TEMPLATES = 4000
SMALL_TEMPLATES = 2000  # four blocks of the real test set, two of the complex one
SCALES = (2.0, 10.0, 1000.0, -2.0, -10.0, -1000.0)
PLANTED = 50
FISHER_ALPHA = 1e-8


# -- statistics ----------------------------------------------------------------------------
# Each check prints its statistic and returns a failure message, or None; a
# test gathers its checks and asserts them together, so that a failure
# reports every statistic the test measured.

def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_p(pos: np.ndarray, marked: np.ndarray) -> float:
    """Two-sided Fisher exact p-value (twice the smaller hypergeometric tail) for positives vs marked slots."""
    n_all, k_all, n, k = pos.size, int(pos.sum()), int(marked.sum()), int((pos & marked).sum())
    lo, hi = max(0, n + k_all - n_all), min(n, k_all)
    base = _log_comb(n_all, n)
    logs = np.array([_log_comb(k_all, x) + _log_comb(n_all - k_all, n - x) - base for x in range(lo, hi + 1)])
    mass = np.exp(logs - logs.max())
    mass /= mass.sum()  # exact up to float rounding: the pmf sums to 1
    lower, upper = float(mass[: k - lo + 1].sum()), float(mass[k - lo:].sum())
    return min(1.0, 2.0 * min(lower, upper))


def independent(pos: np.ndarray, target: np.ndarray, what: str) -> str | None:
    """H0: the signs are exchangeable across these slots, whatever the target says (see the module docstring).

    Fisher's exact test, two-sided; fails at p < 1e-8 (the false-alarm rate).
    Both groups must be large enough for the test to have power.
    """
    pos, target = np.asarray(pos, dtype=bool), np.asarray(target, dtype=bool)
    n1, n0 = int(target.sum()), int((~target).sum())
    assert n1 >= 30 and n0 >= 30, f"{what}: too few slots to compare ({n1} marked, {n0} not)"
    r1, r0 = float(pos[target].mean()), float(pos[~target].mean())
    p = fisher_p(pos, target)
    print(f"\n  {what}: positive rate {r1:.3f} where the target says hit (n={n1}), {r0:.3f} elsewhere (n={n0}); "
          f"Fisher p = {p:.3g}")
    return None if p >= FISHER_ALPHA else f"{what}: signs follow the target ({r1:.3f} vs {r0:.3f}, p = {p:.3g})"


def uncorrelated(x: np.ndarray, y: np.ndarray, what: str) -> str | None:
    """H0: independence. Spearman's rho ~ N(0, 1/(n-1)); |rho| > 6/sqrt(n-1) w.p. about 2e-9."""
    n = x.size
    rho = spearman(x, y)
    bound = 6.0 / math.sqrt(n - 1)
    print(f"\n  {what}: Spearman rho {rho:+.4f} over {n} (bound {bound:.4f})")
    return None if abs(rho) <= bound else f"{what}: Spearman rho {rho:+.4f} over {n}"


def exact(pos: np.ndarray, score: np.ndarray, what: str) -> str | None:
    """Every decision with |s - tau| >= margin is the plaintext one.

    Not statistical: the flood leaves 8.7 standard deviations between the
    slot noise and the smallest such decision value (docs/DESIGN.md
    section 9), a flip probability far below 1e-15 per slot.
    """
    decided = np.abs(score - TAU) >= MARGIN
    wrong = decided & (pos != (score > TAU))
    print(f"\n  {what}: {int(wrong.sum())} of {int(decided.sum())} decisions differ from plaintext "
          f"({int((decided & (score > TAU)).sum())} genuine matches)")
    return None if not wrong.any() else f"{what}: {int(wrong.sum())} of {int(decided.sum())} decisions wrong"


def assert_all(*failures: str | None) -> None:
    found = [f for f in failures if f is not None]
    assert not found, "; ".join(found)


# -- the attacker's tools --------------------------------------------------------------------

def unit(v: np.ndarray) -> np.ndarray:
    """``v`` normalised in long double, one Newton step: |x|^2 - 1 at the long-double floor."""
    x = np.asarray(v, dtype=np.float64).astype(np.longdouble)
    x = x / np.sqrt(np.sum(x * x))
    return x * (np.longdouble(1.5) - np.longdouble(0.5) * np.sum(x * x))


def encode_probe(ctx: BlindContext, values: np.ndarray) -> np.ndarray:
    """NTT residues ``[L, N]`` of any slot values (real or complex) at the probe scale, exactly encoded."""
    coeffs = encode_coefficients(np.asarray(values), ctx.params.probe_scale_bits, ctx.n)
    return ctx.to_ntt(coefficients_to_residues(coeffs[None], ctx.moduli))[0]


def submit(ctx: BlindContext, ct: seal.Ciphertext) -> seal.Ciphertext:
    """What the responder parses from the attacker's upload: saved, then strictly loaded."""
    return ctx.load_seeded_ciphertext(ctx.save_bytes(ct), scale=float(2**ctx.params.probe_scale_bits))


def encrypt_slots(ctx: BlindContext, sk: seal.SecretKey, values: np.ndarray) -> seal.Ciphertext:
    """The attacker's probe: any slot values, encrypted symmetrically as pprm's client does."""
    pt = ctx.plaintext_from_residues(encode_probe(ctx, values), float(2**ctx.params.probe_scale_bits))
    return submit(ctx, seal.Encryptor(ctx.seal, sk).encrypt_symmetric(pt))


def decrypt_complex(ctx: BlindContext, sk: seal.SecretKey, ct: seal.Ciphertext) -> np.ndarray:
    pt = seal.Plaintext()
    seal.Decryptor(ctx.seal, sk).decrypt(ct, pt)
    return ctx.decode_complex(pt)


def windows(ctx: BlindContext, values: np.ndarray) -> np.ndarray:
    """``[slots, d]``: the probe values slot j pairs with template components 0..d-1.

    Slot j computes ``sum_i G[j, (j + i) mod d] * p[(j + i) mod slots]`` for
    i < d (docs/DESIGN.md section 3), so component c meets ``p[j + ((c - j) mod d)]``.
    """
    p = ctx.params
    j = np.arange(p.slots)[:, None]
    c = np.arange(p.dim)[None, :]
    return np.asarray(values)[(j + (c - j) % p.dim) % p.slots]


# -- galleries ------------------------------------------------------------------------------

@dataclass(frozen=True)
class World:
    """A database, the attacker's keys, and the plaintext truth per slot (which the attacker lacks)."""

    ctx: BlindContext
    pair: blind_keys.BlindKeyPair
    keys: Keys
    db: BlindDatabase
    q: np.ndarray          # longdouble [d]: the attacker's unit probe
    slot_g: np.ndarray     # float64 [blocks, positions, d]: the template at each position, zero when empty
    group: np.ndarray      # int64 [blocks, positions]: planted group of the position's template, -1 empty, 0 random

    @property
    def sk(self) -> seal.SecretKey:
        return self.pair.secret_key

    @property
    def occupied(self) -> np.ndarray:
        return self.group >= 0

    def query(self, probe: seal.Ciphertext, keys: Keys | None = None) -> np.ndarray:
        """Decrypted complex slot values ``[blocks, slots]``, rows in database block order."""
        answer = BlindMatcher(self.ctx, self.db).answer(probe, self.keys if keys is None else keys, TAU)
        out = np.empty((self.db.blocks, self.ctx.params.slots), dtype=np.complex128)
        for pos, blk in enumerate(answer.order):
            out[blk] = decrypt_complex(self.ctx, self.sk,
                                       decode_answer(self.ctx, answer.ciphertexts[pos], answer_scale(self.ctx)))
        return out

    def pos(self, z: np.ndarray) -> np.ndarray:
        """The decrypted values by position: the slots' real parts, then with
        complex packing their imaginary parts (what the requester decides on)."""
        return np.concatenate([z.real, z.imag], axis=-1) if self.ctx.params.complex_packing else z.real

    def seen(self, values: np.ndarray) -> np.ndarray:
        """:func:`windows` by position: both positions of a slot see its window."""
        w = windows(self.ctx, values)
        return np.concatenate([w, w]) if self.ctx.params.complex_packing else w

    def send(self, values: np.ndarray, keys: Keys | None = None) -> np.ndarray:
        return self.query(encrypt_slots(self.ctx, self.sk, values), keys)

    def replicate(self, window: np.ndarray) -> np.ndarray:
        p = self.ctx.params
        return np.tile(window, p.slots // p.dim)

    def scores(self, window: np.ndarray) -> np.ndarray:
        """``<G_j, window>`` per slot, ``[blocks, slots]`` (0 for empty slots)."""
        return np.einsum("bsd,d->bs", self.slot_g, np.asarray(window, dtype=np.float64))


def _with_score(g: np.ndarray, direction: np.ndarray, score: float) -> np.ndarray:
    """Unit rows of ``g`` turned to have inner product ``score`` with the unit ``direction``."""
    v = g - np.outer(g @ direction, direction)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return score * direction[None, :] + math.sqrt(1.0 - score * score) * v


def _world(ctx: BlindContext, pair: blind_keys.BlindKeyPair, keys: Keys, g: np.ndarray, group: np.ndarray,
           q: np.ndarray) -> World:
    db = build_database(g, ctx)
    rows = db.slot_record
    slot_g = np.where((rows >= 0)[..., None], g[np.maximum(rows, 0)], 0.0)
    return World(ctx, pair, keys, db, q, slot_g, np.where(rows >= 0, group[np.maximum(rows, 0)], -1))


def _random_units(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    g = rng.normal(size=(n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


# Production gallery groups: genuine matches of q (s = 0.6), near misses of q
# (s = 0.3), and templates an honest probe e_K would hit (g[K] = 0.9).
HIT, NEAR, COMP = 1, 2, 3


@pytest.fixture(scope="module", params=[PROD_BLIND_REAL, PROD_BLIND])
def prod(request: pytest.FixtureRequest) -> World:
    """One block of 4,000 templates on a production set (one template per slot, and two)."""
    blind_prod_ctx, blind_prod_keypair, blind_prod_announced = blind_setup(request.param)
    d = blind_prod_ctx.params.dim
    rng = np.random.default_rng(20260317)
    q = unit(rng.normal(size=d))
    g = _random_units(rng, PROD_TEMPLATES, d)
    group = np.zeros(PROD_TEMPLATES, dtype=np.int64)
    e_k = np.eye(d)[K]
    for label, start, count, direction, score in ((HIT, 0, 100, q, 0.6), (NEAR, 100, 400, q, 0.3),
                                                  (COMP, 500, 300, e_k, 0.9)):
        g[start:start + count] = _with_score(g[start:start + count], np.asarray(direction, dtype=np.float64), score)
        group[start:start + count] = label
    assert blind_prod_ctx.params.slots >= PROD_TEMPLATES
    return _world(blind_prod_ctx, blind_prod_keypair, blind_prod_announced, g, group, q)


# Test-set gallery groups: SCALES[i] gets group 1 + i (templates at s = 1.5*tau/c,
# where sign(c*s - tau) and sign(s - tau) differ); NEG_HIT matches -q.
NEG_HIT = 1 + len(SCALES)


@pytest.fixture(scope="module", params=[INSECURE_BLIND_REAL, INSECURE_BLIND])
def small(request: pytest.FixtureRequest) -> World:
    """2,000 templates in several blocks of a test set (one template per slot, and two)."""
    blind_ctx, blind_keypair, blind_announced = blind_setup(request.param)
    d = blind_ctx.params.dim
    rng = np.random.default_rng(20260318)
    q = unit(rng.normal(size=d))
    q64 = q.astype(np.float64)
    g = _random_units(rng, SMALL_TEMPLATES, d)
    group = np.zeros(SMALL_TEMPLATES, dtype=np.int64)
    for i, c in enumerate(SCALES):
        sl = slice(i * PLANTED, (i + 1) * PLANTED)
        g[sl] = _with_score(g[sl], q64, 1.5 * TAU / c)
        group[sl] = 1 + i
    sl = slice(len(SCALES) * PLANTED, (len(SCALES) + 1) * PLANTED)
    g[sl] = _with_score(g[sl], q64, -0.5)
    group[sl] = NEG_HIT
    world = _world(blind_ctx, blind_keypair, blind_announced, g, group, q)
    assert world.db.blocks == -(-SMALL_TEMPLATES // blind_ctx.params.templates_per_block) >= 2
    return world


def unit_window_scores(slot_g: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Per slot, the score of the normalised real window the slot sees (0 where the window is 0).

    This is what an honest unit probe in that window would be decided on:
    a slot is a genuine match when it clears tau by the margin.
    """
    v = np.asarray(seen.real, dtype=np.float64)
    norm = np.linalg.norm(v, axis=-1)
    s = np.einsum("...d,...d->...", slot_g, v)
    return np.where(norm > 0, s / np.where(norm > 0, norm, 1.0), 0.0)


# -- 1. imaginary channel --------------------------------------------------------------------

@pytest.mark.parametrize("c", [1.0, 1000.0])
def test_imaginary_probe_reads_no_template_component(prod: World, c: float) -> None:
    d = prod.ctx.params.dim
    window = np.zeros(d, dtype=np.complex128)
    window[K] = 1j * c
    z = prod.send(prod.replicate(window))[0]
    h = prod.ctx.params.slots
    occ = prod.occupied[0]
    g_k = prod.slot_g[0, :h, K]  # the template in each slot's real part
    # The attacker's estimate of component K in every slot (exact on an
    # unprotected responder with one template per slot: Im/Re = -C*g/tau,
    # whatever the mask).
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = -TAU * z.imag / (c * z.real)
    assert np.isfinite(estimate[occ[:h]]).all()
    # The probe's real part is zero: no slot has a genuine match, and the
    # templates an honest e_K would hit (COMP, g[K] = 0.9) must not stand out.
    assert_all(uncorrelated(estimate[occ[:h]], g_k[occ[:h]], f"C={c:g}: estimate of g[:, {K}] vs the truth"),
               independent((prod.pos(z) > 0)[occ], (prod.group[0] == COMP)[occ], f"C={c:g}: e_K's hits"))


# -- 2. scaled probes ---------------------------------------------------------------------------

def _no_genuine_match(unit_score: np.ndarray) -> np.ndarray:
    return unit_score < TAU - MARGIN


@pytest.mark.parametrize("c", SCALES)
def test_scaled_probe_cannot_choose_its_own_threshold(small: World, c: float) -> None:
    s = small.scores(small.q)
    # The honest view: the unit probe sign(c)*q. Where it has no genuine
    # match, the attacker's threshold tau/c must show nothing. There sits at
    # least the planted group of this c (s = 1.5*tau/c), and for |c| >= 10
    # many random templates.
    quiet = _no_genuine_match(np.sign(c) * s)
    target = c * s > TAU
    pos = small.pos(small.send(small.replicate(c * small.q))) > 0
    assert_all(independent(pos[quiet], target[quiet], f"c={c:g}: sign(c*s - tau) among non-matches"))


def test_negated_unit_probe_decides_like_an_honest_probe(small: World) -> None:
    # -q is a unit probe: the scaling attack's c = -1 is no attack, and must
    # keep every decision with |s - tau| >= margin exact (50 genuine matches).
    s = -small.scores(small.q)
    assert (s > TAU + MARGIN).sum() >= PLANTED
    assert_all(exact(small.pos(small.send(small.replicate(-small.q))) > 0, s, "the probe -q"))


def _norm_wrap_scale(ctx: BlindContext, k: int) -> np.longdouble:
    """The scale c for which the window norm c**2 equals 1 modulo the modulus the norms are computed under.

    The responder computes the window norms W one level below the data level
    (modulus ``Q' = q0*...*q_{L-2}``), from the projected probe lifted by
    ``2**norm_lift_bits`` and rescaled by the last data prime, so at scale
    ``S = (2**(projected + lift) / q_{L-1})**2`` as SEAL tracks it. ``W*S`` is
    only known modulo Q': ``W = 1 + k*Q'/S`` is indistinguishable from 1 there.
    """
    p = ctx.params
    modulus = math.prod(ctx.moduli[:-1])
    scale = (np.ldexp(np.longdouble(1), p.projected_scale_bits + p.norm_lift_bits) / np.longdouble(ctx.moduli[-1])) ** 2
    return np.sqrt(np.longdouble(1) + np.longdouble(k * modulus) / scale)


@pytest.mark.parametrize("k", [1, 2])
def test_scaled_probe_cannot_wrap_the_norm_check_around_the_modulus(small: World, k: int) -> None:
    # A window norm that is 1 modulo the modulus: unless the responder sees
    # through the wrap (or the scale overflows its scores), the answer is
    # sign(c*s - tau), the attacker's own threshold tau/c.
    c = _norm_wrap_scale(small.ctx, k)
    s = small.scores(small.q)
    quiet = _no_genuine_match(s)
    target = float(c) * s > TAU
    pos = small.pos(small.send(small.replicate(c * small.q))) > 0
    assert_all(independent(pos[quiet], target[quiet], f"k={k}, c={float(c):.6g}: sign(c*s - tau) among non-matches"))


# -- 3. unequal replicas -------------------------------------------------------------------------

def test_unequal_replicas_get_nothing_from_their_scaled_windows(prod: World) -> None:
    p = prod.ctx.params
    replicas = p.slots // p.dim
    # Replicas 0..7 are the unit probe; replica m >= 8 is scaled by 1 + (m - 7)/4.
    factors = np.array([1.0 if m < replicas // 2 else 1.0 + (m - replicas // 2 + 1) / 4.0 for m in range(replicas)],
                       dtype=np.longdouble)
    values = (np.tile(prod.q, (replicas, 1)) * factors[:, None]).reshape(p.slots)
    seen = prod.seen(values)
    gap = np.abs(np.sum(seen * seen, axis=1) - 1).astype(np.float64)
    unit_windows = gap < 2.0**-50   # the whole window lies in the unscaled replicas
    assert unit_windows.sum() == (p.slots // 2 - p.dim + 1) * p.templates_per_block // p.slots
    honest = prod.scores(prod.q)[0]
    # 100 genuine matches sit in random slots; P(fewer than 10 of them in the
    # 3,585 unit windows) is a hypergeometric tail below 1e-12.
    assert (unit_windows & (prod.group[0] == HIT)).sum() >= 10
    # Each slot's own target: its window as it is (the NEAR templates, s = 0.3,
    # clear tau in windows scaled by 4/3 or more), among the slots whose
    # normalised window is not a genuine match.
    target = np.einsum("sd,sd->s", prod.slot_g[0], seen.astype(np.float64)) > TAU
    quiet = _no_genuine_match(unit_window_scores(prod.slot_g[0], seen))
    pos = prod.pos(prod.send(values)[0]) > 0
    assert_all(independent(pos[quiet], target[quiet], "each window's own sign(<G_j, v_j> - tau) among non-matches"),
               exact(pos[unit_windows], honest[unit_windows], "slots whose window is the unit probe"))


# -- 4. complex probe with a unit bilinear norm ----------------------------------------------------

def test_complex_probe_with_unit_bilinear_norm_reads_nothing(small: World) -> None:
    d = small.ctx.params.dim
    b = 100.0
    a = math.sqrt(1.0 + b * b)
    window = np.zeros(d, dtype=np.complex128)
    window[0], window[K] = a, 1j * b
    # sum(p**2) = a**2 - b**2 = 1, while sum(|p|**2) = 2*b**2 + 1.
    assert abs(np.sum(window * window) - 1) < 1e-9 and np.sum(np.abs(window) ** 2) > 2e4
    z = small.send(small.replicate(window))
    h = small.ctx.params.slots
    occ = small.occupied[..., :h]
    g0, gk = small.slot_g[..., :h, 0], small.slot_g[..., :h, K]  # each slot's real-part template
    # Unprotected, with one template per slot, slot j holds r*(a*g0 - tau +
    # i*b*gK): an attacker who knows g[:, 0] (the test gives it the truth)
    # reads gK exactly.
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = z.imag / z.real * (a * g0 - TAU) / b
    assert np.isfinite(estimate[occ]).all()
    # The real projection is a*e_0, whose unit probe e_0 has no genuine match
    # here (random templates: |g0| < 0.3).
    assert (small.slot_g[..., 0] < TAU - MARGIN).all()
    assert_all(uncorrelated(estimate[occ], gk[occ], f"estimate of g[:, {K}] vs the truth"),
               independent(small.pos(z) > 0, a * small.slot_g[..., 0] > TAU, "sign(a*g0 - tau)"))


# -- 6. linking answers by their sign fingerprints -------------------------------------------------

@pytest.mark.parametrize("kind", ["scaled", "scaled-plus-imaginary"])
def test_crafted_fingerprints_do_not_link_blocks_across_queries(small: World, kind: str) -> None:
    window = (1000.0 if kind == "scaled" else 10.0) * small.q.astype(np.complex128)
    if kind != "scaled":
        window[K] += 1000j
    # The probes' normalised real part is q, which has no genuine match in
    # this gallery (the largest score is 0.3): an honest probe would get
    # "no hit" everywhere, a pattern the same for every block. (An honest
    # probe with genuine matches links trivially by its hits, in plaintext
    # terms too: that is inherent in answering at all, and not asserted
    # against here.)
    assert (small.scores(small.q) < TAU - MARGIN).all()
    first = small.pos(small.send(small.replicate(window))) > 0
    second = small.pos(small.send(small.replicate(window))) > 0
    # hamming[a, b]: distance between database block a in query 1 and block b
    # in query 2. Each answer's block order is fresh; an attacker that could
    # match a block to itself across queries (distance ~0 against ~n/2 or
    # against a sparse fingerprint's ~2*density*n) would undo it.
    # H0: the signs are independent across slots and queries and identically
    # distributed across blocks (fair coins, or all alike). Then for a != b,
    # hamming[a, a] - hamming[a, b] is a sum over the n slot positions of
    # independent terms in [-1, 1] with mean 0, and Hoeffding gives
    # P(hamming[a, a] < hamming[a, b] - 6*sqrt(n)) <= exp(-18) = 1.5e-8 per
    # pair: the same block is no closer than another.
    n = small.ctx.params.templates_per_block
    hamming = (first[:, None, :] != second[None, :, :]).sum(axis=-1)
    bound = 6.0 * math.sqrt(n)
    print(f"\n  {kind}: Hamming distances (rows: query 1 blocks, columns: query 2 blocks; bound {bound:.0f}):\n"
          f"{hamming}")
    closer = [(a, b) for a in range(len(hamming)) for b in range(len(hamming))
              if a != b and hamming[a, a] < hamming[a, b] - bound]
    assert not closer, f"{kind}: blocks link to themselves: {hamming.tolist()}"


# -- 7. oversized encryption noise --------------------------------------------------------------

def test_oversized_encryption_noise_does_not_pierce_the_flood(prod: World) -> None:
    ctx, p = prod.ctx, prod.ctx.params
    lvl = p.data_primes
    rng = np.random.default_rng(76)
    values = prod.replicate(prod.q)
    # By hand: c1 uniform, c0 = -c1*s + m + e with e uniform in [-2**76, 2**76]
    # per coefficient (a fresh encryption has |e| of a few units).
    s = plaintext_residues(ctx, prod.sk.data(), lvl + 1)[:lvl]
    m = encode_probe(ctx, values)
    e = ctx.to_ntt(coefficients_to_residues(np.rint(rng.uniform(-1.0, 1.0, ctx.n).astype(np.longdouble)
                                                    * np.ldexp(np.longdouble(1.0), 76))[None], ctx.moduli))[0]
    c1 = np.stack([rng.integers(0, q, ctx.n, dtype=np.uint64) for q in ctx.moduli])
    c0 = np.empty_like(c1)
    for j, q in enumerate(ctx.moduli):
        big = m[j].astype(object) + e[j].astype(object) - c1[j].astype(object) * s[j].astype(object)
        c0[j] = (big % q).astype(np.uint64)
    probe = submit(ctx, ctx.from_residues(np.stack([c0, c1]), float(2**p.probe_scale_bits)))
    bits = noise_bits(ctx, prod.sk, probe, values, p.probe_scale_bits)
    assert 75.0 <= bits <= 76.5, f"the crafted probe's noise is 2**{bits:.2f}"
    # The attacker knows its noise, so it knows the probe each slot really
    # carries: its effective scores s_eff and its targets sign(s_eff - tau).
    seen = prod.seen(decrypt_complex(ctx, prod.sk, probe))
    s_eff = np.einsum("sd,sd->s", prod.slot_g[0], seen.real)
    honest = prod.scores(prod.q)[0]
    quiet = _no_genuine_match(unit_window_scores(prod.slot_g[0], seen))
    z = prod.pos(prod.query(probe)[0])
    occ = prod.occupied[0]
    assert_all(uncorrelated(z[occ], honest[occ], "values vs the true scores"),
               uncorrelated(z[occ], s_eff[occ], "values vs the attacker's effective scores"),
               independent((z > 0)[quiet], (s_eff > TAU)[quiet], "sign(s_eff - tau) among non-matches"))


# -- 5. degenerate and malformed keys ------------------------------------------------------------

def _body(blob: bytes) -> tuple[tuple[int, int], bytes]:
    """A SEAL stream's version and uncompressed members."""
    _magic, _h, major, minor, compr, _r, _total = seal_stream.HEADER.unpack_from(blob)
    body = blob[seal_stream.HEADER.size:]
    if compr == 2:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 28)
    assert compr in (0, 2)
    return (major, minor), body


def _stream(version: tuple[int, int], body: bytes) -> bytes:
    """An uncompressed SEAL stream around ``body`` (SEAL loads it like a compressed one)."""
    head = seal_stream.HEADER.pack(seal_stream.SEAL_MAGIC, seal_stream.HEADER.size, version[0], version[1], 0, 0,
                                   seal_stream.HEADER.size + len(body))
    return head + body


def _zero_part(ctx: BlindContext, blob: bytes, cls: type[seal.GaloisKeys] | type[seal.RelinKeys], index: int,
               *, whole: bool) -> bytes:
    """``blob`` with the first component of key ``index`` zeroed: its ``c0`` only, or both polynomials.

    The announced (seeded) stream holds ``c0`` and a seed for ``c1``; for
    ``whole`` the keys are re-saved unseeded first, so ``c1`` is there to zero too.
    """
    keys = load_switching_keys(ctx, cls, blob)
    if whole:
        blob = ctx.save_bytes(keys)
    _meta, res = seal_stream.parse(ctx.save_bytes(keys.data()[index][0].data()))
    needle = (res if whole else res[0]).astype("<u8").tobytes()
    version, body = _body(blob)
    at = body.find(needle)
    assert at > 0 and body.find(needle, at + 1) < 0
    return _stream(version, body[:at] + bytes(len(needle)) + body[at + len(needle):])


def _relevel(ctx: BlindContext, blob: bytes) -> bytes:
    """Switching keys relabelled from the key level to the data level (every parms_id in the stream)."""
    version, body = _body(blob)
    key_level, data_level = (struct.pack("<4Q", *pid) for pid in (ctx.key_parms_id, ctx.parms_id))
    assert body.count(key_level) > 1
    return _stream(version, body.replace(key_level, data_level))


def _public(ctx: BlindContext, pair: blind_keys.BlindKeyPair, case: str) -> bytes:
    head = len(blind_keys.PUBLIC_MAGIC) + blind_keys.SEED_BYTES
    blob = pair.public_blob
    moduli = ctx.key_moduli
    b = np.frombuffer(blob, dtype="<u8", offset=head).astype(np.uint64).reshape(len(moduli), ctx.n)
    if case == "b-zero":
        b = np.zeros_like(b)
    elif case == "b-zero-mod-one-prime":
        b = b.copy()
        b[0] = 0
    elif case == "b-constant":
        b = np.ones_like(b)
    elif case == "b-is-P":
        # (0, P) in the old format; here a comes from the seed, and b = P is
        # zero modulo the special prime.
        b = np.array([[moduli[-1] % q] * ctx.n for q in moduli], dtype=np.uint64)
    elif case == "b-out-of-range":
        b = b.copy()
        b[1, 7] = moduli[1]
    else:
        return {"empty": b"", "truncated": blob[:-8], "extended": blob + bytes(8),
                "wrong-magic": b"PPRMBPK0" + blob[8:], "seal-stream": pair.galois_blob[:len(blob)]}[case]
    return blob[:head] + b.astype("<u8").tobytes()


PUBLIC_CASES = ["b-zero", "b-zero-mod-one-prime", "b-constant", "b-is-P", "b-out-of-range", "empty", "truncated",
                "extended", "wrong-magic", "seal-stream", "other-set"]
GALOIS_CASES = ["zero-c0", "zero-part", "no-conjugation", "extra-element", "wrong-level", "other-set", "empty",
                "truncated", "oversized", "garbage", "relin-in-its-place"]
RELIN_CASES = ["zero-c0", "zero-part", "missing", "galois-in-its-place", "wrong-level", "other-set", "truncated",
               "oversized", "garbage"]


def _galois(ctx: BlindContext, pair: blind_keys.BlindKeyPair, other: blind_keys.BlindKeyPair, case: str) -> bytes:
    blob = pair.galois_blob
    elements = blind_keys.galois_elements(ctx)
    conj = seal.GaloisKeys.get_index(elements[-1])
    if case in ("zero-c0", "zero-part"):
        return _zero_part(ctx, blob, seal.GaloisKeys, conj, whole=case == "zero-part")
    if case in ("no-conjugation", "extra-element"):
        wanted = elements[:-1] if case == "no-conjugation" else [*elements, pow(3, 2, 2 * ctx.n)]
        return ctx.save_bytes(seal.KeyGenerator(ctx.seal, pair.secret_key).create_galois_keys(wanted))
    if case == "wrong-level":
        return _relevel(ctx, blob)
    return {"other-set": other.galois_blob, "empty": b"", "truncated": blob[:-1000],
            "oversized": bytes(blind_keys.MAX_KEY_BYTES + 1), "garbage": bytes(range(256)) * 64,
            "relin-in-its-place": pair.relin_blob}[case]


def _relin(ctx: BlindContext, pair: blind_keys.BlindKeyPair, other: blind_keys.BlindKeyPair, case: str) -> bytes:
    blob = pair.relin_blob
    if case in ("zero-c0", "zero-part"):
        return _zero_part(ctx, blob, seal.RelinKeys, 0, whole=case == "zero-part")
    if case == "wrong-level":
        return _relevel(ctx, blob)
    return {"missing": b"", "galois-in-its-place": pair.galois_blob, "other-set": other.relin_blob,
            "truncated": blob[:-1000], "oversized": bytes(blind_keys.MAX_KEY_BYTES + 1),
            "garbage": bytes(range(256)) * 64}[case]


def _refused(ctx: BlindContext, public: bytes, galois: bytes, relin: bytes) -> CiphertextError:
    with pytest.raises(CiphertextError) as info:
        blind_keys.load_announced(ctx, public, galois, relin)
    assert isinstance(info.value, PprmError) and not isinstance(info.value, RuntimeError)
    return info.value


def test_the_honest_announcement_loads(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair) -> None:
    # The control for the refusals below: the unmodified blobs load.
    pair = blind_keypair
    keys = blind_keys.load_announced(blind_ctx, pair.public_blob, pair.galois_blob, pair.relin_blob)
    assert isinstance(keys, blind_keys.EvaluationKeys)


@pytest.mark.parametrize("case", PUBLIC_CASES)
def test_degenerate_public_key_is_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
                                          blind_prod_keypair: blind_keys.BlindKeyPair, case: str) -> None:
    pair = blind_keypair
    public = blind_prod_keypair.public_blob if case == "other-set" else _public(blind_ctx, pair, case)
    assert public != pair.public_blob
    _refused(blind_ctx, public, pair.galois_blob, pair.relin_blob)


@pytest.mark.parametrize("case", GALOIS_CASES)
def test_degenerate_galois_keys_are_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
                                            blind_prod_keypair: blind_keys.BlindKeyPair, case: str) -> None:
    pair = blind_keypair
    galois = _galois(blind_ctx, pair, blind_prod_keypair, case)
    assert galois != pair.galois_blob
    _refused(blind_ctx, pair.public_blob, galois, pair.relin_blob)


@pytest.mark.parametrize("case", RELIN_CASES)
def test_degenerate_relinearisation_key_is_refused(blind_ctx: BlindContext, blind_keypair: blind_keys.BlindKeyPair,
                                                   blind_prod_keypair: blind_keys.BlindKeyPair, case: str) -> None:
    pair = blind_keypair
    relin = _relin(blind_ctx, pair, blind_prod_keypair, case)
    assert relin != pair.relin_blob
    _refused(blind_ctx, pair.public_blob, pair.galois_blob, relin)


# -- rigged keys: well-formed, of another secret key ---------------------------------------------

def test_rigged_evaluation_keys_let_a_scaled_probe_read_nothing(small: World) -> None:
    # The public key is the attacker's own (its answers decrypt); the Galois
    # and relinearisation keys belong to another secret key. They load (no
    # format check can tell), and the responder's own encryption of zero
    # turns whatever they switch into noise the attacker cannot predict. The
    # probe 10*q, with the attacker's threshold tau/10, must read nothing
    # among the non-matches of q.
    other = blind_keys.generate(small.ctx)
    rigged = blind_keys.load_announced(small.ctx, small.pair.public_blob, other.galois_blob, other.relin_blob)
    s = small.scores(small.q)
    quiet = _no_genuine_match(s)
    pos = small.pos(small.send(small.replicate(10.0 * small.q), rigged)) > 0
    assert_all(independent(pos[quiet], (10.0 * s > TAU)[quiet], "rigged keys: sign(10*s - tau) among non-matches"))
