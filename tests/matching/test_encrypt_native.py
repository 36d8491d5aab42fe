"""Native block encryption against SEAL's ``encrypt_symmetric``: values, noise, uniformity, a gallery flow.

:class:`pprm.matching.encrypt_native.NativeEncryptor` must give ciphertexts
with SEAL's distribution: SEAL decrypts them to the encoded values within the
fresh-noise bound, their noise ``c0 + c1*s - m`` is SEAL's centered binomial
(variance 10.5, |e| <= 21, the same histogram as SEAL's own ciphertexts),
``c1`` is uniform and fresh per ciphertext, a gallery enrolled through it
matches as the plaintext does and stays exact under removal, and no key word
leaks into a repr or an exception.

Decryption, the NTT of ``m`` and the inverse NTT of the noise all go through
SEAL itself (Decryptor, ``transform_to/from_ntt``), not through the C code
under test. Skipped when the extension is not built, unless
``PPRM_REQUIRE_NATIVE=1``.
"""

from __future__ import annotations

import math
import os
import types
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import tenseal.sealapi as seal
import zstandard

from pprm.crypto import keys, params
from pprm.crypto.context import CkksContext
from pprm.crypto.embedding import slot_transform
from pprm.errors import BackendError, CiphertextError, GalleryError
from pprm.matching import encrypt_native, kernel_native
from pprm.matching import owner as owner_module
from pprm.matching.encrypt_native import NativeEncryptor
from pprm.matching.gallery import EncryptedGallery, pack_columns
from pprm.matching.owner import GalleryOwner
from pprm.matching.templates import normalise_templates
from tests.helpers import INSECURE_SEALED, INSECURE_SEALED_COMPLEX, ScoredWorld

REQUIRED = os.environ.get("PPRM_REQUIRE_NATIVE") == "1"
if not kernel_native.available() and not REQUIRED:
    pytest.skip("native kernel pprm._native_kernel is not built (pip install -e . with a C compiler)",
                allow_module_level=True)

PRODUCTION = "pprm-sealed-n8192-complex-v1"
CBD_VARIANCE = 10.5  # 42 fair bits, +1 or -1 each half: 42 / 4


@pytest.fixture(scope="module", params=[INSECURE_SEALED, INSECURE_SEALED_COMPLEX])
def setup(request: pytest.FixtureRequest) -> Iterator[tuple[CkksContext, seal.SecretKey, NativeEncryptor]]:
    ctx = CkksContext(params.get(request.param, allow_insecure=True))
    sk, _pk = keys.generate(ctx)
    with NativeEncryptor(ctx, sk) as enc:
        yield ctx, sk, enc


def _columns(ctx: CkksContext, d: int, seed: int) -> np.ndarray:
    """Random values on the template grid, by position."""
    p = ctx.params
    step = float(2**p.template_grid_bits)
    return np.rint(np.random.default_rng(seed).uniform(-1, 1, (d, p.templates_per_block)) * step) / step


def _decoded(ctx: CkksContext, sk: seal.SecretKey, block: np.ndarray) -> np.ndarray:
    """SEAL's decryption and decoding of every ciphertext of a block (slot values)."""
    p = ctx.params
    dec = seal.Decryptor(ctx.seal, sk)
    pt = seal.Plaintext()
    out = []
    for k in range(block.shape[0]):
        dec.decrypt(ctx.from_residues(block[k], float(2**p.gallery_scale_bits)), pt)
        out.append(ctx.decode_complex(pt) if p.packing == "complex" else ctx.decode(pt))
    return np.array(out)


def _fresh_bound(ctx: CkksContext) -> float:
    """8 standard deviations of a fresh slot error: noise (10.5) plus rounding (1/12) over N coefficients."""
    return 8.0 * float(np.sqrt(ctx.n * (CBD_VARIANCE + 1 / 12))) / 2.0**ctx.params.gallery_scale_bits


def _plain_residues(ctx: CkksContext, pt: seal.Plaintext) -> np.ndarray:
    """A data-level NTT plaintext's residues, ``uint64[N]``, from SEAL's stream."""
    raw = ctx.save_bytes(pt)
    body = raw[16:]
    if raw[5] == 2:  # the compression mode byte of the SEAL header
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 28)
    elif raw[5] == 1:
        body = zlib.decompress(body)
    off = 32 + 8 + 8 + 16 + 8  # parms_id, coeff_count, scale, DynArray header, count
    return np.frombuffer(body, dtype="<u8", offset=off, count=ctx.n).astype(np.uint64)


def _from_ntt(ctx: CkksContext, polys: np.ndarray) -> np.ndarray:
    """SEAL's inverse NTT of ``uint64[k, N]`` at q0, centered: ``int64[k, N]``."""
    q = ctx.moduli[0]
    out = np.empty(polys.shape, dtype=np.int64)
    filler = np.ones((1, 1, ctx.n), dtype=np.uint64)  # SEAL refuses a transparent ciphertext
    for start in range(0, polys.shape[0], 15):
        chunk = np.concatenate([polys[start:start + 15, None, :], filler])
        ct = ctx.from_residues(chunk, 1.0)
        ctx.evaluator.transform_from_ntt_inplace(ct)
        res = ctx.to_residues(ct)[:-1, 0, :]
        out[start:start + 15] = np.where(res > q // 2, res.astype(np.int64) - np.int64(q), res.astype(np.int64))
    return out


def _sub(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    return np.where(a >= b, a - b, a + (np.uint64(q) - b))


def _native_noise(ctx: CkksContext, sk: seal.SecretKey, enc: NativeEncryptor, d: int) -> np.ndarray:
    """``c0 + c1*s - m`` of d native ciphertexts in coefficient form (via SEAL's decryption)."""
    p = ctx.params
    cols = _columns(ctx, d, 5)
    block = enc.encrypt_columns(cols)
    m = slot_transform(ctx.n).encode_complex(pack_columns(cols, p), p.gallery_scale_bits)
    q = ctx.moduli[0]
    m_res = np.where(m < 0, m + np.int64(q), m).astype(np.uint64)
    m_ntt = ctx.to_ntt(m_res[:, None, :])[:, 0, :]
    dec = seal.Decryptor(ctx.seal, sk)
    pt = seal.Plaintext()
    got = np.empty((d, ctx.n), dtype=np.uint64)
    for k in range(d):
        dec.decrypt(ctx.from_residues(block[k], 1.0), pt)
        got[k] = _plain_residues(ctx, pt)
    return _from_ntt(ctx, _sub(got, m_ntt, q))


def _seal_noise(ctx: CkksContext, sk: seal.SecretKey, d: int) -> np.ndarray:
    """The same statistic on SEAL's own ``encrypt_symmetric`` (m from SEAL's encoder)."""
    p = ctx.params
    slot_values = pack_columns(_columns(ctx, d, 6), p)
    encryptor, dec = seal.Encryptor(ctx.seal, sk), seal.Decryptor(ctx.seal, sk)
    ct, pt = seal.Ciphertext(ctx.seal), seal.Plaintext()
    q = ctx.moduli[0]
    diff = np.empty((d, ctx.n), dtype=np.uint64)
    for k in range(d):
        pt_m = ctx.encode(slot_values[k], p.gallery_scale_bits)
        encryptor.encrypt_symmetric(pt_m, ct)
        dec.decrypt(ct, pt)
        diff[k] = _sub(_plain_residues(ctx, pt), _plain_residues(ctx, pt_m), q)
    return _from_ntt(ctx, diff)


# -- 1. SEAL decrypts native ciphertexts to the encoded values ------------------------

def test_seal_decrypts_native_ciphertexts(setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor]) -> None:
    ctx, sk, enc = setup
    cols = _columns(ctx, 70, 1)  # 70 rows: two full calls of 32 and a short one
    block = enc.encrypt_columns(cols)
    assert block.shape == (70, 2, 1, ctx.n) and block.dtype == np.uint64
    assert int(block.max()) < ctx.moduli[0]
    err = np.abs(_decoded(ctx, sk, block) - pack_columns(cols, ctx.params))
    assert 0 < err.max() < _fresh_bound(ctx)


def test_seal_decrypts_native_ciphertexts_production_set() -> None:
    ctx = CkksContext(params.get(PRODUCTION))
    sk, _pk = keys.generate(ctx)
    cols = _columns(ctx, 3, 2)
    with NativeEncryptor(ctx, sk) as enc:
        block = enc.encrypt_columns(cols)
    err = np.abs(_decoded(ctx, sk, block) - pack_columns(cols, ctx.params))
    # ~6.5e-5 measured; the bound is 1.4e-4 and the template grid step 2.4e-4.
    assert 0 < err.max() < _fresh_bound(ctx)


def test_progress_every_32_ciphertexts_and_at_the_end(
        setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor]) -> None:
    ctx, _sk, enc = setup
    seen: list[int] = []
    enc.encrypt_columns(_columns(ctx, 70, 3), seen.append)
    assert seen == [32, 64, 70]


def test_a_short_random_pool_is_redrawn(setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Half the words needed: the C code must say so (EAGAIN), and the retry
    # with a fresh, doubled pool gives correct ciphertexts.
    ctx, sk, enc = setup
    monkeypatch.setattr(encrypt_native, "_pool_words", lambda need, q: need // 2)
    cols = _columns(ctx, 4, 4)
    err = np.abs(_decoded(ctx, sk, enc.encrypt_columns(cols)) - pack_columns(cols, ctx.params))
    assert err.max() < _fresh_bound(ctx)


# -- 2. the noise is SEAL's centered binomial ----------------------------------------

def test_noise_is_seals_centered_binomial(setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor]) -> None:
    ctx, sk, enc = setup
    d = 128  # 131072 coefficients at N = 1024
    native = _native_noise(ctx, sk, enc, d).ravel()
    ours = _seal_noise(ctx, sk, d).ravel()
    for e in (native, ours):
        assert e.size >= 100_000
        assert int(np.abs(e).max()) <= 21
        # Sample standard errors: mean 0.009, variance 0.04; bounds are ~5 and ~13 of them.
        assert abs(float(e.mean())) < 0.05
        assert abs(float(e.var()) - CBD_VARIANCE) < 0.05 * CBD_VARIANCE
    # The whole histogram, against the exact law and against SEAL's sample.
    values = np.arange(-21, 22)
    pmf = np.array([float(math.comb(42, int(v) + 21)) for v in values]) / 2.0**42
    counts = np.array([(native == v).sum() for v in values], dtype=np.float64)
    seal_counts = np.array([(ours == v).sum() for v in values], dtype=np.float64)
    keep = pmf * native.size >= 20  # |v| <= 11 or so: enough counts for chi-square
    exp = pmf[keep] * native.size
    chi_law = float((((counts[keep] - exp) ** 2) / exp).sum())
    both = counts[keep] + seal_counts[keep]
    chi_two = float((((counts[keep] - seal_counts[keep]) ** 2) / both).sum())
    dof = int(keep.sum()) - 1
    # Generous: the 1e-6 quantile of chi-square with ~22 degrees of freedom is ~60.
    assert chi_law < dof + 10 * np.sqrt(2 * dof), chi_law
    assert chi_two < dof + 10 * np.sqrt(2 * dof), chi_two


# -- 3. c1 is uniform and fresh --------------------------------------------------------

def test_c1_is_uniform_and_never_repeats(setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor]) -> None:
    ctx, _sk, enc = setup
    q = ctx.moduli[0]
    block = enc.encrypt_columns(_columns(ctx, 128, 7))
    c1 = block[:, 1, 0, :]
    assert len({row.tobytes() for row in c1}) == c1.shape[0]
    # Same plaintext twice: fresh randomness, different ciphertexts.
    cols = _columns(ctx, 2, 8)
    assert not np.array_equal(enc.encrypt_columns(cols), enc.encrypt_columns(cols))
    words = c1.ravel()
    top = (words.astype(object) * 256 // q).astype(np.int64)  # the top 8 bits of a / q
    low = (words & np.uint64(0xFF)).astype(np.int64)
    for bins in (top, low):
        counts = np.bincount(bins, minlength=256).astype(np.float64)
        assert counts.size == 256
        exp = words.size / 256
        chi = float(((counts - exp) ** 2 / exp).sum())
        # 255 degrees of freedom: mean 255, sd 22.6; 10 sd is generous.
        assert chi < 255 + 10 * np.sqrt(2 * 255), chi


# -- 4. a gallery flow through the native path ------------------------------------------

def _force_backend(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Make GalleryOwner see backend ``name`` (the matcher keeps the real one); count native blocks."""
    monkeypatch.setattr(owner_module, "kernel", types.SimpleNamespace(backend=lambda: name))
    calls: list[int] = []
    real = NativeEncryptor.encrypt_columns

    def spy(self: NativeEncryptor, columns: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        calls.append(columns.shape[0])
        return real(self, columns, progress)

    monkeypatch.setattr(NativeEncryptor, "encrypt_columns", spy)
    return calls


def test_native_gallery_decides_as_plaintext_and_removal_stays_exact(
        make_world: Callable[..., ScoredWorld], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _force_backend(monkeypatch, "native")
    thresholds = (0.3, 0.5)
    world = make_world(1100, 64, thresholds, seed=11, params=INSECURE_SEALED_COMPLEX)
    assert calls == [64, 64]  # both blocks were encrypted natively
    margin = world.state.config.parameter_set.decision_margin
    matcher, decider = world.matcher(), world.decider()
    for probe, tau in zip(world.probes, thresholds, strict=True):
        hits = set(decider.hits(matcher.match(probe, tau)))
        checked = 0
        for rid, s in world.scores(probe).items():
            if abs(s - tau) >= margin:
                checked += 1
                assert (rid in hits) == (s >= tau), f"record {rid}: s - tau = {s - tau:+.5f}"
        assert checked > 0.95 * 1100

    # Removal decrypts, rounds to the grid and re-encrypts natively: every other record exact.
    block0 = world.gallery.index.blocks[0].slots.copy()
    gone = int(block0[9])
    world.owner.remove(world.gallery.index.references[gone])
    del world.rows[gone]
    assert len(calls) == 3
    cols = world.owner._decrypt_block(0)
    occ = world.gallery.index.blocks[0].slots
    assert not cols[:, 9].any()
    for pos in np.flatnonzero(occ >= 0).tolist():
        assert np.array_equal(cols[:, pos], world.owner._grid(world.rows[int(occ[pos])].astype(np.float64)))
    # And the raw decryption is within the fresh-noise bound of the grid values.
    raw = _decoded(world.state.ctx, world.secret_key, world.gallery.block(0))
    expected = pack_columns(cols, world.state.ctx.params)
    assert np.abs(raw - expected).max() < _fresh_bound(world.state.ctx)


def test_native_and_seal_encryptions_add_up_exactly(
        tmp_path: os.PathLike[str], sealed_ctx: CkksContext, sealed_keypair: tuple[seal.SecretKey, seal.PublicKey],
        sealed_key_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A block enrolled through SEAL, appended to natively (two encryptions
    # summed), then a record removed (natively re-encrypted): exact throughout.
    dim = 32
    gallery = EncryptedGallery(os.path.join(tmp_path, "gallery"), sealed_ctx.params, sealed_key_id, dim)
    owner = GalleryOwner(sealed_ctx, sealed_keypair[0], gallery)
    rows = np.random.default_rng(9).standard_normal((30, dim)).astype(np.float32)
    unit = owner._grid(normalise_templates(rows, dim).astype(np.float64))
    calls = _force_backend(monkeypatch, "numpy")
    owner.enroll(rows[:20], [f"A-{i}" for i in range(20)])
    assert calls == []
    monkeypatch.setattr(owner_module, "kernel", types.SimpleNamespace(backend=lambda: "native"))
    owner.enroll(rows[20:], [f"B-{i}" for i in range(10)])
    assert calls == [dim] and gallery.index.blocks[0].encryptions == 2
    cols = owner._decrypt_block(0)
    assert np.array_equal(cols[:, :30], unit.T)
    raw = _decoded(sealed_ctx, sealed_keypair[0], gallery.block(0))
    assert np.abs(raw[:, :30] - unit.T).max() < 2 * _fresh_bound(sealed_ctx)
    owner.remove("A-3")
    assert calls == [dim, dim] and gallery.index.blocks[0].encryptions == 1
    cols = owner._decrypt_block(0)
    keep = [i for i in range(30) if i != 3]
    assert np.array_equal(cols[:, keep], unit[keep].T) and not cols[:, 3].any()


# -- 5. no key word in a repr or an exception ---------------------------------------------

def _key_words(ctx: CkksContext, sk: seal.SecretKey) -> list[str]:
    data = sk.data()  # a reference to the key: read only
    words = [int(data[i]) for i in range(ctx.n)]
    # Decimal and hex forms of every word long enough not to occur by chance.
    return [f for w in words for f in (str(w), f"{w:x}") if len(f) >= 8]


def test_no_key_word_in_repr_or_errors(setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor]) -> None:
    ctx, sk, _enc = setup
    enc = NativeEncryptor(ctx, sk)
    forms = _key_words(ctx, sk)
    assert repr(enc) == f"NativeEncryptor({ctx.params.name})"
    assert not any(ch.isdigit() for ch in repr(enc).replace(ctx.params.name, ""))
    texts = [repr(enc), str(enc)]
    bad_shape = np.zeros((2, ctx.params.templates_per_block + 1))
    with pytest.raises(GalleryError) as e1:
        enc.encrypt_columns(bad_shape)
    huge = np.zeros((1, ctx.params.templates_per_block))
    huge[0, 0] = 2.0**40  # a coefficient near 2**57 ... 2**62: beyond q0 or beyond int64's margin
    with pytest.raises(CiphertextError) as e2:
        enc.encrypt_columns(huge * 64)
    nan = np.full((1, ctx.params.templates_per_block), np.nan)
    with pytest.raises(CiphertextError) as e3:
        enc.encrypt_columns(nan)
    m = np.full((1, ctx.n), ctx.moduli[0], dtype=np.int64)  # |m| = q0: refused by the C range check
    out = np.zeros((1, 2, 1, ctx.n), dtype=np.uint64)
    with pytest.raises(CiphertextError) as e4:
        enc._encrypt_rows(m, out)
    assert not out.any()  # nothing written when an input is refused
    enc.close()
    assert not enc._s.any()  # the copy of the key is zeroed
    with pytest.raises(BackendError) as e5:
        enc.encrypt_columns(np.zeros((1, ctx.params.templates_per_block)))
    for exc in (e1, e2, e3, e4, e5):
        texts += [str(exc.value), repr(exc.value)]
    for text in texts:
        assert not any(f in text for f in forms), text
    # Closing zeroed our copy only: SEAL's key still decrypts.
    with NativeEncryptor(ctx, sk) as again:
        cols = _columns(ctx, 1, 10)
        assert np.abs(_decoded(ctx, sk, again.encrypt_columns(cols)) - pack_columns(cols, ctx.params)).max() < 1e-3


def test_deleting_the_encryptor_zeroes_its_key_copy(
        setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor]) -> None:
    ctx, sk, _enc = setup
    enc = NativeEncryptor(ctx, sk)
    s = enc._s
    assert s.any()
    del enc
    assert not s.any()


def test_decryption_gives_seals_plaintext_words(setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor]) -> None:
    ctx, sk, enc = setup
    block = enc.encrypt_columns(_columns(ctx, 6, 21))
    dec = seal.Decryptor(ctx.seal, sk)
    pt = seal.Plaintext()
    theirs = np.empty((6, ctx.n), dtype=np.uint64)
    for k in range(6):
        dec.decrypt(ctx.from_residues(block[k], 1.0), pt)
        theirs[k] = _plain_residues(ctx, pt)
    assert np.array_equal(enc.decrypt_coefficients(block), _from_ntt(ctx, theirs))


def test_the_export_reads_the_same_values_through_c_and_through_seal(
        setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor], tmp_path: object,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, sk, _enc = setup
    _force_backend(monkeypatch, "native")  # the numpy backend's run checks the C export too
    gallery = EncryptedGallery(str(tmp_path), ctx.params, "k" * 64, 12)
    owner = GalleryOwner(ctx, sk, gallery)
    tpl = np.random.default_rng(4).standard_normal((ctx.params.templates_per_block + 5, 12)).astype(np.float32)
    owner.enroll(tpl, [f"R-{i}" for i in range(tpl.shape[0])])
    assert owner._native_encryptor() is not None
    ids_c, rows_c = owner.export_templates()
    monkeypatch.setattr(owner, "_native_encryptor", lambda: None)
    ids_s, rows_s = owner.export_templates()
    assert np.array_equal(ids_c, ids_s) and np.array_equal(rows_c, rows_s)
    step = float(2**ctx.params.template_grid_bits)
    want = np.rint(normalise_templates(tpl, 12).astype(np.float64) * step) / step
    assert np.array_equal(rows_c, want)


def test_decryption_refuses_unreduced_words_and_a_closed_encryptor(
        setup: tuple[CkksContext, seal.SecretKey, NativeEncryptor]) -> None:
    ctx, sk, _enc = setup
    bad = np.full((1, 2, 1, ctx.n), np.uint64(ctx.moduli[0]))
    with NativeEncryptor(ctx, sk) as enc:
        with pytest.raises(BackendError, match="not reduced"):
            enc.decrypt_coefficients(bad)
        with pytest.raises(BackendError):
            enc.decrypt_coefficients(np.zeros((1, 2, ctx.n), dtype=np.uint64))
    with pytest.raises(BackendError, match="closed"):
        enc.decrypt_coefficients(np.zeros((1, 2, 1, ctx.n), dtype=np.uint64))
