"""Regenerate ``wire_vectors.json``: known-answer vectors for the pprm wire format.

Every input is derived from fixed labels, and every primitive involved is
deterministic (Ed25519 signatures, XSalsa20-Poly1305 with a given nonce,
canonical JSON), so running this twice gives the same file byte for byte.

Only regenerate on a deliberate, versioned wire-format change: the point of
the vectors is that ``tests/protocol/test_envelope.py`` fails when the bytes on the
wire change by accident. Usage::

    python tests/data/make_wire_vectors.py          # rewrite the file
    python tests/data/make_wire_vectors.py --check  # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

import numpy as np

from pprm.crypto.identity import Identity
from pprm.protocol.blind_messages import BlindAnswerBody, BlindQueryBody, KeyAnnouncementBody, make_handle
from pprm.protocol.card import make_card
from pprm.protocol.envelope import Header, seal_envelope
from pprm.protocol.messages import AnswerBody, FollowUpBody, QueryBody

__all__ = ["build", "main", "PATH"]

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire_vectors.json")


def _derive(label: str, n: int = 32) -> bytes:
    """Fixed pseudo-random bytes named by ``label``."""
    return hashlib.sha256(f"pprm-wire-vector/{label}".encode()).digest()[:n]


def _identity(name: str) -> Identity:
    return Identity(name, _derive(f"{name}/sign"), _derive(f"{name}/box"))


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def build() -> dict[str, Any]:
    """Compute every vector from its fixed inputs.

    Returns:
        The JSON-ready vectors.
    """
    de, fr = _identity("DE"), _identity("FR")
    idents = {}
    for ident in (de, fr):
        pub = ident.public
        idents[ident.name] = {
            "signing_seed": ident.signing_seed.hex(), "box_secret": ident.box_secret.hex(),
            "verify_key": pub.verify_key.hex(), "box_key": pub.box_key.hex(),
            "fingerprint": pub.fingerprint.hex(),
        }

    # Small, exactly representable probe values keep the vector readable.
    probe = np.array([0.5, -0.5, 0.25, -0.25, 0.125, -0.125, 0.0, 1.0], dtype=np.float32)
    query = QueryBody("CASE-2024-0001", "wire format known-answer test", probe)
    query_bytes = query.to_bytes()

    nonce = _derive("nonce", 24)
    boxed = de.box_to(fr.public, query_bytes, nonce=nonce)

    # A fixed stand-in for a parameter digest: the real digests belong to
    # pprm.crypto.params and change whenever a set is retuned, which is not a
    # change of the wire format.
    digest = hashlib.sha256(b"pprm-wire-vector/params").hexdigest()
    hdr = Header("query", "DE", "FR", _derive("query-id", 16).hex(), 1_700_000_000, 1_700_003_600,
                 digest, "sealed", "")
    wire = seal_envelope(de, hdr, boxed)
    header_json = json.dumps(hdr.to_json(), sort_keys=True, separators=(",", ":"))

    tokens = [_derive(f"token-{i}", 30).hex()[:48] for i in range(2)]
    answer = AnswerBody(hdr.id, True, tuple(tokens))
    followup = FollowUpBody(hdr.id, tokens[0])

    card = make_card(de, "pprm-sealed-n8192-v1", digest, 512, _derive("key-id", 16).hex(), 1_700_000_000)

    # Blind profile: binary bodies (JSON part + length-prefixed parts), with
    # short stand-ins for the SEAL blobs; the framing is what is pinned.
    blind_key = _derive("blind-key-id", 16).hex()
    keys_body = KeyAnnouncementBody(blind_key, 1_700_086_400, _derive("public-key", 32), _derive("galois-keys", 32),
                                    _derive("relin-key", 32))
    bquery = BlindQueryBody("CASE-2024-0002", "wire format known-answer test (blind)", blind_key,
                            _derive("probe-ciphertext", 32))
    bhdr = Header("query", "DE", "FR", _derive("blind-query-id", 16).hex(), 1_700_000_000, 1_700_003_600,
                  digest, "blind", "")
    bwire = seal_envelope(de, bhdr, de.box_to(fr.public, bquery.to_bytes(), nonce=_derive("blind-nonce", 24)))
    banswer = BlindAnswerBody(bhdr.id, (_derive("answer-block-0", 24), _derive("answer-block-1", 24)))

    return {
        "format": "pprm-wire-vectors/1",
        "generator": "tests/data/make_wire_vectors.py",
        "identities": idents,
        "query_body": {"case": query.case, "purpose": query.purpose, "probe_f32le": probe.tobytes().hex(),
                       "canonical": query_bytes.decode("ascii")},
        "box": {"sender": "DE", "recipient": "FR", "nonce": nonce.hex(), "plaintext": "query_body",
                "length": len(boxed), "sha256": _sha(boxed), "hex": boxed.hex()},
        "envelope": {
            "signer": "DE",
            "header": {"type": hdr.type, "sender": hdr.sender, "recipient": hdr.recipient, "id": hdr.id,
                       "created": hdr.created, "expires": hdr.expires, "params": hdr.params,
                       "profile": hdr.profile, "in_reply_to": hdr.in_reply_to},
            "header_json": header_json, "body": "box",
            "length": len(wire), "sha256": _sha(wire),
        },
        "answer_body": {"query_id": answer.query_id, "hit": answer.hit, "candidates": tokens,
                        "canonical": answer.to_bytes().decode("ascii")},
        "followup_body": {"query_id": followup.query_id, "token": followup.token,
                          "canonical": followup.to_bytes().decode("ascii")},
        "blind": {
            "keys_body_hex": keys_body.to_bytes().hex(),
            "query_body_hex": bquery.to_bytes().hex(),
            "answer_body_hex": banswer.to_bytes().hex(),
            "handle": make_handle(3, 4711),
            "envelope": {"header_json": json.dumps(bhdr.to_json(), sort_keys=True, separators=(",", ":")),
                         "length": len(bwire), "sha256": _sha(bwire)},
        },
        "card": {"signer": "DE", "params": "pprm-sealed-n8192-v1", "params_digest": digest, "dim": 512,
                 "key_id": _derive("key-id", 16).hex(), "created": 1_700_000_000,
                 "text": card.decode("ascii"), "sha256": _sha(card)},
    }


def render(vectors: dict[str, Any]) -> str:
    """The file's exact text."""
    return json.dumps(vectors, sort_keys=True, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the vectors file.

    Returns:
        Process exit status.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    text = render(build())
    if args.check:
        with open(PATH, encoding="ascii") as fh:
            same = fh.read() == text
        print("wire vectors are up to date" if same else "wire vectors differ from the library's output")
        return 0 if same else 1
    with open(PATH, "w", encoding="ascii") as fh:
        fh.write(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
