"""Hazmat: SEAL's ciphertext stream format <-> numpy residues.

TenSEAL's ``sealapi`` exposes no buffer for a ciphertext's residues, only
``save``/``load`` through a file. This module converts SEAL 4.x ciphertext
streams to and from a ``uint64`` array of shape ``[size, L, N]`` (NTT form,
SEAL's own layout), so that the matching kernels can work on raw residues.

Parsing is strict: every header field is checked against what the caller
expects, and anything else raises :class:`~pprm.errors.CiphertextError`.

Stream layout (SEAL 4.x, ``Ciphertext::save_members`` behind a SEALHeader):

* SEALHeader, 16 bytes: magic 0xA15E, header size 16, version major/minor,
  compression mode (0 none, 1 zlib, 2 zstd), reserved, total size.
* members (compressed as a whole when the mode says so): parms_id (4 x u64),
  is_ntt_form (u8), size, poly_modulus_degree, coeff_modulus_size (u64 each),
  scale (f64), correction_factor (u64), then a DynArray: its own SEALHeader,
  an element count (u64) and the residues.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from pprm.errors import CiphertextError

__all__ = ["CiphertextMeta", "HEADER", "parse", "emit", "emit_plaintext", "SEAL_MAGIC"]

SEAL_MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")  # magic, hdr size, major, minor, compr, reserved, total size
_META = struct.Struct("<4QBQQQdQ")  # parms_id, is_ntt_form, size, N, L, scale, correction
_COUNT = struct.Struct("<Q")
_COMPR_NONE, _COMPR_ZLIB, _COMPR_ZSTD = 0, 1, 2
# A ciphertext of size 2 at N=32768 with 15 primes is under 8 MiB; anything
# claiming more than this is refused before decompressing.
MAX_STREAM_BYTES = 64 << 20


@dataclass(frozen=True)
class CiphertextMeta:
    """The header fields of a ciphertext stream."""

    parms_id: tuple[int, int, int, int]
    is_ntt_form: bool
    size: int
    poly_modulus_degree: int
    coeff_modulus_size: int
    scale: float
    correction_factor: int
    version: tuple[int, int]


def _members(blob: bytes) -> tuple[tuple[int, int], bytes]:
    if len(blob) < HEADER.size:
        raise CiphertextError("ciphertext stream is truncated (no SEAL header)")
    magic, hsize, major, minor, compr, _res, total = HEADER.unpack_from(blob)
    if magic != SEAL_MAGIC or hsize != HEADER.size:
        raise CiphertextError("ciphertext stream has no valid SEAL header")
    if total != len(blob):
        raise CiphertextError(f"ciphertext stream length {len(blob)} != header size {total}")
    if total > MAX_STREAM_BYTES:
        raise CiphertextError("ciphertext stream is oversized")
    body = blob[HEADER.size:]
    if compr == _COMPR_NONE:
        return (major, minor), body
    try:
        if compr == _COMPR_ZSTD:
            return (major, minor), zstandard.ZstdDecompressor().decompress(
                body, max_output_size=MAX_STREAM_BYTES)
        if compr == _COMPR_ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(body, MAX_STREAM_BYTES)
            if d.unconsumed_tail or not d.eof:
                raise CiphertextError("ciphertext stream: zlib data is truncated or oversized")
            return (major, minor), out
    except (zstandard.ZstdError, zlib.error):
        raise CiphertextError("ciphertext stream does not decompress") from None
    raise CiphertextError(f"ciphertext stream uses unknown compression mode {compr}")


def parse(blob: bytes) -> tuple[CiphertextMeta, np.ndarray]:
    """Parse a SEAL ciphertext stream.

    Args:
        blob: bytes written by SEAL's ``Ciphertext::save`` (any compression).

    Returns:
        ``(meta, residues)`` with residues a fresh ``uint64`` array of shape
        ``[size, L, N]``.

    Raises:
        CiphertextError: truncated, oversized, trailing bytes, or inconsistent sizes.
    """
    version, body = _members(bytes(blob))
    if len(body) < _META.size + HEADER.size + _COUNT.size:
        raise CiphertextError("ciphertext stream is truncated (members)")
    p0, p1, p2, p3, ntt, size, n, lvl, scale, corr = _META.unpack_from(body)
    off = _META.size
    magic, hsize, _mj, _mn, compr, _res, dsize = HEADER.unpack_from(body, off)
    if magic != SEAL_MAGIC or hsize != HEADER.size or compr != _COMPR_NONE:
        raise CiphertextError("ciphertext stream has a malformed data header")
    off += HEADER.size
    (count,) = _COUNT.unpack_from(body, off)
    off += _COUNT.size
    if ntt not in (0, 1):
        raise CiphertextError("ciphertext stream has a malformed NTT flag")
    if not (2 <= size <= 16) or n < 1024 or n & (n - 1) or not 1 <= lvl <= 64:
        raise CiphertextError("ciphertext stream has implausible dimensions")
    if count != size * n * lvl or dsize != HEADER.size + _COUNT.size + 8 * count:
        raise CiphertextError("ciphertext stream data size does not match its dimensions")
    if len(body) != off + 8 * count:
        raise CiphertextError("ciphertext stream is truncated or has trailing bytes")
    data = np.frombuffer(body, dtype="<u8", count=count, offset=off).astype(np.uint64)
    meta = CiphertextMeta((p0, p1, p2, p3), bool(ntt), size, n, lvl, scale, corr, version)
    return meta, data.reshape(size, lvl, n)


def emit(meta: CiphertextMeta, residues: np.ndarray) -> bytes:
    """Write an uncompressed SEAL ciphertext stream.

    Args:
        meta: header fields; ``size``, ``coeff_modulus_size`` and
            ``poly_modulus_degree`` must match ``residues.shape``.
        residues: ``uint64`` array of shape ``[size, L, N]``.

    Returns:
        Bytes that SEAL's ``Ciphertext::load`` accepts.

    Raises:
        CiphertextError: shape and metadata disagree.
    """
    arr = np.ascontiguousarray(residues, dtype="<u8")
    if arr.shape != (meta.size, meta.coeff_modulus_size, meta.poly_modulus_degree):
        raise CiphertextError("residue array shape does not match the ciphertext metadata")
    count = arr.size
    data_hdr = HEADER.pack(SEAL_MAGIC, HEADER.size, meta.version[0], meta.version[1],
                           _COMPR_NONE, 0, HEADER.size + _COUNT.size + 8 * count)
    members = _META.pack(*meta.parms_id, int(meta.is_ntt_form), meta.size,
                         meta.poly_modulus_degree, meta.coeff_modulus_size, meta.scale,
                         meta.correction_factor)
    total = HEADER.size + len(members) + len(data_hdr) + _COUNT.size + 8 * count
    head = HEADER.pack(SEAL_MAGIC, HEADER.size, meta.version[0], meta.version[1],
                       _COMPR_NONE, 0, total)
    return b"".join((head, members, data_hdr, _COUNT.pack(count), arr.tobytes()))


_PT_META = struct.Struct("<4QQd")  # parms_id, coeff_count, scale


def emit_plaintext(parms_id: tuple[int, int, int, int], scale: float, residues: np.ndarray,
                   version: tuple[int, int]) -> bytes:
    """Write an uncompressed SEAL plaintext stream in NTT form.

    Args:
        parms_id: the level the plaintext belongs to (NTT form: non-zero).
        scale: the CKKS scale.
        residues: ``uint64[L, N]`` NTT residues.
        version: SEAL's serialisation version, as in the context's own streams.

    Returns:
        Bytes that SEAL's ``Plaintext::load`` accepts.
    """
    arr = np.ascontiguousarray(residues, dtype="<u8")
    count = arr.size
    data_hdr = HEADER.pack(SEAL_MAGIC, HEADER.size, version[0], version[1], _COMPR_NONE, 0,
                           HEADER.size + _COUNT.size + 8 * count)
    members = _PT_META.pack(*parms_id, count, scale)
    total = HEADER.size + len(members) + len(data_hdr) + _COUNT.size + 8 * count
    head = HEADER.pack(SEAL_MAGIC, HEADER.size, version[0], version[1], _COMPR_NONE, 0, total)
    return b"".join((head, members, data_hdr, _COUNT.pack(count), arr.tobytes()))
