"""Regenerate the crypto known-answer vectors in ``tests/data``.

Files written:

* ``params_digests.json``: for every registered parameter set, its canonical
  fields and digest. ``tests/crypto/test_sealed_params.py`` fails if any constant of any
  set changes, because peers compare these digests in every header.
* ``blind_params_digests.json``: the same for the blind-profile sets
  (``tests/crypto/test_blind_params.py``).
* ``seal_ct_n1024.bin``: a real SEAL ciphertext stream, written by SEAL's own
  ``Ciphertext::save`` (zstd-compressed, the SEAL default), encrypting
  :data:`VALUES` at scale 2**24 on ``INSECURE-sealed-n1024``.
* ``seal_ct_n1024.json``: what the stream must parse to (header fields and the
  SHA-256 of its residues) and how it was made.

Determinism: SEAL draws every random value (secret key, ``a``, noise) from
the context's random generator factory; here that factory is a Blake2xb PRNG
seeded from :data:`SEED_LABEL`, so key generation and encryption repeat bit
for bit, and zstd compression of equal input is deterministic too. Running
this twice gives identical files, and ``tests/crypto/test_seal_stream.py`` checks
that regenerating in-process reproduces the committed stream byte for byte.

Only regenerate on a deliberate change (a new parameter set, a TenSEAL/SEAL
upgrade): the point of the vectors is that tests fail when these bytes change
by accident. Usage, from the repository root::

    python tests/data/make_vectors.py          # rewrite the files
    python tests/data/make_vectors.py --check  # exit 1 if any file differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto import blind_params, params, seal_stream

__all__ = ["build", "main", "seeded_encryption", "DATA", "VALUES", "SEED_LABEL", "CT_PARAMS"]

DATA = os.path.dirname(os.path.abspath(__file__))
CT_PARAMS = "INSECURE-sealed-n1024"
SEED_LABEL = "pprm-test-vector/seal-ct-n1024/v1"
# The gallery encoding scale when the vector was made; the vector stands on
# its own (it is about the stream format), so it is fixed here, not read
# from the parameter set.
SCALE_BITS = 24
# Sixteen values spanning the template range [-1, 1], then zeros in the
# remaining slots: enough to see a wrong decode, small enough to read.
VALUES = [round((-1) ** i * (i + 1) / 16.0, 6) for i in range(16)]


def _seed_words(label: str) -> list[int]:
    """Eight 64-bit words derived from ``label`` (the Blake2xb PRNG seed)."""
    digest = hashlib.sha512(label.encode()).digest()
    return [int.from_bytes(digest[8 * i: 8 * i + 8], "little") for i in range(8)]


def seeded_encryption() -> tuple[seal.SEALContext, seal.SecretKey, bytes]:
    """Generate a key and encrypt :data:`VALUES` with a seeded SEAL PRNG.

    Returns:
        ``(seal_context, secret_key, stream)`` where ``stream`` is what SEAL's
        ``Ciphertext::save`` wrote for the symmetric encryption.
    """
    ps = params.get(CT_PARAMS, allow_insecure=True)
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(ps.poly_modulus_degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(ps.poly_modulus_degree, list(ps.coeff_modulus_bits)))
    parms.set_random_generator(seal.Blake2xbPRNGFactory(_seed_words(SEED_LABEL)))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.NONE)
    sk = seal.KeyGenerator(context).secret_key()
    pt = seal.Plaintext()
    seal.CKKSEncoder(context).encode(VALUES, context.first_parms_id(), float(2**SCALE_BITS), pt)
    ct = seal.Ciphertext(context)
    seal.Encryptor(context, sk).encrypt_symmetric(pt, ct)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ct.bin")
        ct.save(path)
        with open(path, "rb") as fh:
            stream = fh.read()
    return context, sk, stream


def _params_vectors() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in params.names(include_insecure=True):
        ps = params.get(name, allow_insecure=True)
        out[name] = {"canonical": ps.canonical(), "digest": ps.digest}
    return out


def _blind_params_vectors() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in blind_params.names(include_insecure=True):
        ps = blind_params.get(name, allow_insecure=True)
        out[name] = {"canonical": ps.canonical(), "digest": ps.digest}
    return out


def build() -> dict[str, bytes]:
    """Compute every vector file.

    Returns:
        File name (inside ``tests/data``) -> exact file content.
    """
    _context, _sk, stream = seeded_encryption()
    meta, residues = seal_stream.parse(stream)
    compression = seal_stream.HEADER.unpack_from(stream)[4]
    ct_info = {
        "params": CT_PARAMS,
        "seed_label": SEED_LABEL,
        "scale_bits": SCALE_BITS,
        "values": VALUES,
        "stream_bytes": len(stream),
        "stream_sha256": hashlib.sha256(stream).hexdigest(),
        "compression_mode": compression,
        "meta": {
            "parms_id": list(meta.parms_id),
            "is_ntt_form": meta.is_ntt_form,
            "size": meta.size,
            "poly_modulus_degree": meta.poly_modulus_degree,
            "coeff_modulus_size": meta.coeff_modulus_size,
            "scale": meta.scale,
            "correction_factor": meta.correction_factor,
            "version": list(meta.version),
        },
        # Residues as little-endian uint64 in SEAL's [size][L][N] order.
        "residues_sha256": hashlib.sha256(np.ascontiguousarray(residues, dtype="<u8").tobytes()).hexdigest(),
    }

    def dump(obj: Any) -> bytes:
        return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()

    return {
        "params_digests.json": dump(_params_vectors()),
        "blind_params_digests.json": dump(_blind_params_vectors()),
        "seal_ct_n1024.bin": stream,
        "seal_ct_n1024.json": dump(ct_info),
    }


def main(argv: list[str] | None = None) -> int:
    """Write the vector files, or with ``--check`` compare them.

    Returns:
        0 on success; 1 when ``--check`` finds a difference.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    status = 0
    for name, content in build().items():
        path = os.path.join(DATA, name)
        if args.check:
            try:
                with open(path, "rb") as fh:
                    same = fh.read() == content
            except FileNotFoundError:
                same = False
            if not same:
                print(f"{name}: differs from a fresh build", file=sys.stderr)
                status = 1
        else:
            with open(path, "wb") as fh:
                fh.write(content)
            print(f"wrote {name} ({len(content)} bytes)")
    return status


if __name__ == "__main__":
    sys.exit(main())
