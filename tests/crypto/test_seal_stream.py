"""SEAL ciphertext streams: round trip, strict rejection, and a known-answer vector."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import struct
import zlib
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as seal
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pprm.crypto import seal_stream
from pprm.crypto.context import CkksContext
from pprm.crypto.seal_stream import HEADER, CiphertextMeta, emit, parse
from pprm.errors import CiphertextError

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
META = struct.Struct("<4QBQQQdQ")
# SEAL header bytes: magic 0-1, header size 2, version major 3 / minor 4,
# compression 5, reserved 6-7, total size 8-15.
OFF_COMPR = 5
# Offsets inside an uncompressed stream: outer header, members, data header, count.
OFF_MEMBERS = HEADER.size
OFF_DATA_HDR = OFF_MEMBERS + META.size
OFF_COUNT = OFF_DATA_HDR + HEADER.size
OFF_RESIDUES = OFF_COUNT + 8
# Header bytes the parser does not read, so flipping them cannot change the
# parse: the reserved u16 of both SEAL headers (SEAL itself ignores it too)
# and the version bytes of the inner DynArray header (the outer header's
# version is the one reported in the meta).
IGNORED = {6, 7, OFF_DATA_HDR + 3, OFF_DATA_HDR + 4, OFF_DATA_HDR + 6, OFF_DATA_HDR + 7}


def _meta(size: int = 2, n: int = 1024, lvl: int = 1, **kw: Any) -> CiphertextMeta:
    fields: dict[str, Any] = {
        "parms_id": (1, 2, 3, 4), "is_ntt_form": True, "size": size, "poly_modulus_degree": n,
        "coeff_modulus_size": lvl, "scale": 2.0**24, "correction_factor": 1, "version": (4, 1),
    }
    fields.update(kw)
    return CiphertextMeta(**fields)


def _small_stream() -> tuple[CiphertextMeta, np.ndarray, bytes]:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 2**60, size=(2, 1, 1024), dtype=np.uint64)
    meta = _meta()
    return meta, arr, emit(meta, arr)


def _recompress(blob: bytes, mode: int) -> bytes:
    """The same stream with its members compressed (1 zlib, 2 zstd), as SEAL writes it."""
    body = blob[HEADER.size:]
    packed = zlib.compress(body) if mode == 1 else zstandard.ZstdCompressor().compress(body)
    magic, hsize, major, minor, _c, res, _t = HEADER.unpack_from(blob)
    return HEADER.pack(magic, hsize, major, minor, mode, res, HEADER.size + len(packed)) + packed


def _with_total(blob: bytes) -> bytes:
    """Fix the outer header's total size to the actual length (a consistent forgery)."""
    magic, hsize, major, minor, compr, res, _t = HEADER.unpack_from(blob)
    return HEADER.pack(magic, hsize, major, minor, compr, res, len(blob)) + blob[HEADER.size:]


def _same(a: tuple[CiphertextMeta, np.ndarray], b: tuple[CiphertextMeta, np.ndarray]) -> bool:
    return a[0] == b[0] and a[1].shape == b[1].shape and bool(np.array_equal(a[1], b[1]))


# -- round trip ---------------------------------------------------------------

@st.composite
def streams(draw: st.DrawFn) -> tuple[CiphertextMeta, np.ndarray]:
    size = draw(st.integers(2, 4))
    n = draw(st.sampled_from([1024, 2048]))
    lvl = draw(st.integers(1, 3))
    u64 = st.integers(0, 2**64 - 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = rng.integers(0, 2**64, size=(size, lvl, n), dtype=np.uint64, endpoint=False)
    # Extremes at drawn positions: 0 and 2**64 - 1 must survive too.
    for value in draw(st.lists(st.sampled_from([0, 2**64 - 1, 2**63]), max_size=4)):
        idx = tuple(draw(st.integers(0, s - 1)) for s in arr.shape)
        arr[idx] = np.uint64(value)
    meta = CiphertextMeta(
        parms_id=tuple(draw(u64) for _ in range(4)),  # type: ignore[arg-type]
        is_ntt_form=draw(st.booleans()), size=size, poly_modulus_degree=n, coeff_modulus_size=lvl,
        scale=draw(st.floats(allow_nan=False, allow_infinity=False)),
        correction_factor=draw(u64),
        version=(draw(st.integers(0, 255)), draw(st.integers(0, 255))),
    )
    return meta, arr


@given(streams(), st.sampled_from([0, 1, 2]))
def test_parse_inverts_emit(case: tuple[CiphertextMeta, np.ndarray], mode: int) -> None:
    meta, arr = case
    blob = emit(meta, arr)
    if mode:
        blob = _recompress(blob, mode)
    got_meta, got = parse(blob)
    assert got_meta == meta
    assert got.dtype == np.uint64 and got.shape == arr.shape
    assert np.array_equal(got, arr)
    assert got.flags.writeable, "parse must return a fresh array, not a view of the bytes"


def test_emit_refuses_a_shape_that_disagrees_with_the_meta() -> None:
    arr = np.zeros((2, 1, 1024), dtype=np.uint64)
    for meta in (_meta(size=3), _meta(n=2048), _meta(lvl=2)):
        with pytest.raises(CiphertextError):
            emit(meta, arr)


def test_emit_writes_what_seal_loads(sealed_ctx: CkksContext) -> None:
    # SEAL's own loader accepts emit's bytes, and saves back the same residues.
    rng = np.random.default_rng(1)
    arr = rng.integers(0, sealed_ctx.moduli[0], size=(2, 1, sealed_ctx.n), dtype=np.uint64)
    ct = seal.Ciphertext(sealed_ctx.seal)
    sealed_ctx._load_into(ct, emit(sealed_ctx.meta(2.0**30), arr))
    meta, back = parse(sealed_ctx.save_bytes(ct))
    assert meta == sealed_ctx.meta(2.0**30)
    assert np.array_equal(back, arr)


# -- strict rejection ---------------------------------------------------------

def test_truncated_streams_are_refused() -> None:
    blob = _small_stream()[2]
    cuts = [*range(OFF_RESIDUES + 16), len(blob) - 8, len(blob) - 1]
    for cut in cuts:
        with pytest.raises(CiphertextError):
            parse(blob[:cut])
        if cut >= HEADER.size:
            # Even with the outer size fixed up, the inner sizes give it away.
            with pytest.raises(CiphertextError):
                parse(_with_total(blob[:cut]))


@pytest.mark.parametrize("tail", [b"\x00", b"\x00" * 8, b"garbage!"])
def test_trailing_bytes_are_refused(tail: bytes) -> None:
    blob = _small_stream()[2]
    with pytest.raises(CiphertextError):
        parse(blob + tail)
    with pytest.raises(CiphertextError, match="trailing"):
        parse(_with_total(blob + tail))


def test_bad_magic_and_header_size_are_refused() -> None:
    blob = _small_stream()[2]
    for off, value in ((0, 0x5F), (1, 0xA0), (2, 15), (2, 17)):
        bad = bytearray(blob)
        bad[off] = value
        with pytest.raises(CiphertextError, match="SEAL header"):
            parse(bytes(bad))
    bad = bytearray(blob)
    bad[OFF_DATA_HDR] ^= 0xFF
    with pytest.raises(CiphertextError, match="data header"):
        parse(bytes(bad))


@pytest.mark.parametrize("mode", [3, 4, 255])
def test_unknown_compression_mode_is_refused(mode: int) -> None:
    blob = _small_stream()[2]
    bad = bytearray(blob)
    bad[OFF_COMPR] = mode
    with pytest.raises(CiphertextError, match="compression"):
        parse(bytes(bad))


def test_compressed_data_header_is_refused() -> None:
    # The inner DynArray header must say "uncompressed".
    blob = _small_stream()[2]
    bad = bytearray(blob)
    bad[OFF_DATA_HDR + OFF_COMPR] = 2
    with pytest.raises(CiphertextError, match="data header"):
        parse(bytes(bad))


@pytest.mark.parametrize("mode", [1, 2])
def test_corrupt_or_truncated_compression_is_refused(mode: int) -> None:
    blob = _small_stream()[2]
    packed = _recompress(blob, mode)
    for bad in (_with_total(packed[:-10]), _with_total(packed[: HEADER.size + 5]),
                _with_total(packed[: HEADER.size] + b"\x00" * 64)):
        with pytest.raises(CiphertextError):
            parse(bad)


def test_oversized_claims_are_refused() -> None:
    huge = HEADER.pack(seal_stream.SEAL_MAGIC, HEADER.size, 4, 1, 0, 0, seal_stream.MAX_STREAM_BYTES + 1)
    blob = huge + b"\x00" * (seal_stream.MAX_STREAM_BYTES + 1 - HEADER.size)
    with pytest.raises(CiphertextError, match="oversized"):
        parse(blob)
    # A small zstd frame that would expand beyond the limit is refused too.
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (seal_stream.MAX_STREAM_BYTES + 1024))
    blob = HEADER.pack(seal_stream.SEAL_MAGIC, HEADER.size, 4, 1, 2, 0, HEADER.size + len(bomb)) + bomb
    with pytest.raises(CiphertextError):
        parse(blob)


@pytest.mark.parametrize(("field", "value"), [
    ("size", 1), ("size", 17), ("size", 3),
    ("poly_modulus_degree", 512), ("poly_modulus_degree", 1536), ("poly_modulus_degree", 2048),
    ("coeff_modulus_size", 0), ("coeff_modulus_size", 65), ("coeff_modulus_size", 2),
])
def test_dimensions_that_disagree_with_the_data_are_refused(field: str, value: int) -> None:
    meta, _arr, blob = _small_stream()
    changes: dict[str, Any] = {field: value}
    forged = dataclasses.replace(meta, **changes)
    members = META.pack(*forged.parms_id, 1, forged.size, forged.poly_modulus_degree,
                        forged.coeff_modulus_size, forged.scale, forged.correction_factor)
    bad = blob[:OFF_MEMBERS] + members + blob[OFF_DATA_HDR:]
    with pytest.raises(CiphertextError):
        parse(bad)


def test_data_sizes_that_disagree_are_refused() -> None:
    blob = _small_stream()[2]
    count = struct.unpack_from("<Q", blob, OFF_COUNT)[0]
    dsize = HEADER.unpack_from(blob, OFF_DATA_HDR)[6]
    for c in (count - 1, count + 1, 0, 2**64 - 1):
        bad = bytearray(blob)
        struct.pack_into("<Q", bad, OFF_COUNT, c)
        with pytest.raises(CiphertextError, match="data size"):
            parse(bytes(bad))
    for d in (dsize - 8, dsize + 8, 0):
        bad = bytearray(blob)
        struct.pack_into("<Q", bad, OFF_DATA_HDR + 8, d)
        with pytest.raises(CiphertextError, match="data size"):
            parse(bytes(bad))


def test_ntt_flag_must_be_boolean() -> None:
    blob = _small_stream()[2]
    bad = bytearray(blob)
    bad[OFF_MEMBERS + 32] = 2
    with pytest.raises(CiphertextError, match="NTT"):
        parse(bytes(bad))


def test_every_header_byte_flip_is_refused_or_visible() -> None:
    # All 255 other values of each of the 101 header bytes: the parser either
    # refuses with CiphertextError (nothing else may escape) or reports a
    # different ciphertext. Only the bytes it documents as unread may leave
    # the parse unchanged.
    meta, arr, blob = _small_stream()
    original = (meta, arr)
    unchanged: set[int] = set()
    refused = 0
    for pos in range(OFF_RESIDUES):
        for value in range(256):
            if value == blob[pos]:
                continue
            bad = bytearray(blob)
            bad[pos] = value
            try:
                got = parse(bytes(bad))
            except CiphertextError:
                refused += 1
                continue
            if _same(got, original):
                unchanged.add(pos)
    assert unchanged <= IGNORED, f"flips at {sorted(unchanged - IGNORED)} went unnoticed"
    assert refused > 0.5 * OFF_RESIDUES * 255


def test_header_flips_never_reach_seal_as_another_ciphertext(sealed_ctx: CkksContext) -> None:
    # Through load_ciphertext, a flipped header byte is either refused or
    # (for fields SEAL does not use in CKKS: versions, reserved, correction
    # factor) yields exactly the original ciphertext.
    rng = np.random.default_rng(2)
    arr = rng.integers(0, sealed_ctx.moduli[0], size=(2, 1, sealed_ctx.n), dtype=np.uint64)
    scale = 2.0**24
    blob = emit(sealed_ctx.meta(scale), arr)
    accepted: set[int] = set()
    for pos in range(OFF_RESIDUES):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[pos] ^= mask
            try:
                ct = sealed_ctx.load_ciphertext(bytes(bad), scale=scale)
            except CiphertextError:
                continue
            accepted.add(pos)
            assert ct.scale == scale
            assert np.array_equal(sealed_ctx.to_residues(ct), arr), f"flip at byte {pos} changed the ciphertext"
    corr = set(range(OFF_DATA_HDR - 8, OFF_DATA_HDR))  # correction_factor, last u64 of the members
    assert accepted <= IGNORED | corr | {3, 4}


# -- known-answer vector ------------------------------------------------------

def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", os.path.join(DATA, "make_vectors.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def vector() -> tuple[bytes, dict[str, Any]]:
    with open(os.path.join(DATA, "seal_ct_n1024.bin"), "rb") as fh:
        blob = fh.read()
    with open(os.path.join(DATA, "seal_ct_n1024.json"), encoding="utf-8") as fh:
        info = json.load(fh)
    return blob, info


def test_seal_written_stream_parses_to_pinned_residues(vector: tuple[bytes, dict[str, Any]]) -> None:
    blob, info = vector
    assert hashlib.sha256(blob).hexdigest() == info["stream_sha256"]
    # SEAL compressed it (zstd), so this exercises the decompressing path.
    assert HEADER.unpack_from(blob)[4] == info["compression_mode"] == 2
    meta, arr = parse(blob)
    m = info["meta"]
    assert meta == CiphertextMeta(tuple(m["parms_id"]), m["is_ntt_form"], m["size"],
                                  m["poly_modulus_degree"], m["coeff_modulus_size"], m["scale"],
                                  m["correction_factor"], tuple(m["version"]))
    assert arr.shape == (2, 1, 1024)
    assert hashlib.sha256(arr.astype("<u8").tobytes()).hexdigest() == info["residues_sha256"]


def test_vector_is_reproducible_and_decrypts_to_its_values(
        vector: tuple[bytes, dict[str, Any]], sealed_ctx: CkksContext) -> None:
    blob, info = vector
    gen = _load_generator()
    _context, sk, stream = gen.seeded_encryption()
    # The seeded generator reproduces SEAL's output byte for byte ...
    assert stream == blob
    # ... and pprm's strict loader accepts SEAL's own stream and decrypts it
    # (fresh noise at scale 2**24 is ~1e-5; 1e-4 tolerance).
    ct = sealed_ctx.load_ciphertext(blob, scale=float(2 ** info["scale_bits"]))
    pt = seal.Plaintext()
    seal.Decryptor(sealed_ctx.seal, sk).decrypt(ct, pt)
    values = sealed_ctx.decode(pt)
    want = np.zeros(sealed_ctx.slots)
    want[: len(info["values"])] = info["values"]
    assert np.abs(values - want).max() < 1e-4
    # And the emitted (uncompressed) copy of the parse is equivalent.
    meta, arr = parse(blob)
    assert _same(parse(emit(meta, arr)), (meta, arr))
