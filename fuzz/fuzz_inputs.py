"""Fuzz target: every parser of bytes that come from another state.

The first byte of the input picks a parser, the rest is its input. A parser
may refuse its input only with a :class:`pprm.errors.PprmError` (the typed
errors callers handle); any other exception, a hang or a crash is a finding.
Selector 0 signs the input as the body of an otherwise valid envelope from a
trusted peer, so what lies behind the signature check is reached too.

Run with atheris (``pip install -e ".[fuzz]"``)::

    python fuzz/fuzz_inputs.py -max_total_time=60          # CI runs it briefly
    python fuzz/fuzz_inputs.py fuzz/corpus                  # longer, keeping a corpus

``one_input`` is plain Python, so ``tests/integration/test_fuzz_target.py`` also drives it
with Hypothesis where atheris is not installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable

import numpy as np

from pprm.crypto import blind_keys, blind_params, masked_codec, seal_stream
from pprm.crypto import params as sealed_params
from pprm.crypto.answer_codec import decode_answer
from pprm.crypto.context import BlindContext, CkksContext
from pprm.crypto.identity import Identity
from pprm.errors import PprmError
from pprm.net.wire import pack_delivery, unpack_delivery
from pprm.node import keylink
from pprm.protocol import canonical
from pprm.protocol.blind_messages import (
    BlindAnswerBody,
    BlindFollowUpBody,
    BlindQueryBody,
    KeyAnnouncementBody,
    parse_handle,
)
from pprm.protocol.card import parse_card
from pprm.protocol.delivery import split_query_file
from pprm.protocol.envelope import Header, open_envelope, seal_envelope
from pprm.protocol.messages import AnswerBody, FollowUpBody, QueryBody, RefusalBody
from pprm.protocol.tokens import TokenMinter

__all__ = ["one_input", "seeds"]


def _identity(name: str) -> Identity:
    seed = hashlib.sha256(f"pprm-fuzz/{name}".encode()).digest()
    return Identity(name, seed, hashlib.sha256(seed).digest())


DE, FR = _identity("DE"), _identity("FR")
DIGEST = hashlib.sha256(b"pprm-fuzz/params").hexdigest()
NOW = 1_700_000_100
_CTX = BlindContext(blind_params.get("INSECURE-blind-n1024-v2", allow_insecure=True))
_SEALED = CkksContext(sealed_params.get("INSECURE-sealed-n1024-complex", allow_insecure=True))
_LAYOUT = masked_codec.masked_layout(_SEALED.params, _SEALED.moduli[0])
_MINTER = TokenMinter(hashlib.sha256(b"pprm-fuzz/token-key").digest())
_PUBLIC = blind_keys.generate(_CTX).public_blob


def _lookup(fpr: bytes) -> object:
    return {DE.public.fingerprint: DE.public, FR.public.fingerprint: FR.public}.get(fpr)


def _open(data: bytes) -> None:
    open_envelope(data, lookup=_lookup, me="FR", params_digest=DIGEST, now=NOW,  # type: ignore[arg-type]
                  blind_digest=DIGEST)


def _signed_body(data: bytes) -> None:
    # A body behind a valid signature: exercises unboxing and body parsing.
    for profile, kind in (("sealed", "query"), ("blind", "query"), ("sealed", "answer"), ("blind", "keys")):
        hdr = Header(kind, "DE", "FR", "00" * 16, NOW, NOW + 60, DIGEST, profile, "")
        env = open_envelope(seal_envelope(DE, hdr, data), lookup=_lookup,  # type: ignore[arg-type]
                            me="FR", params_digest=DIGEST, now=NOW, blind_digest=DIGEST)
        try:
            plain = FR.unbox_from(env.sender, env.body)
        except PprmError:
            plain = env.body
        for parse in (QueryBody.from_bytes, BlindQueryBody.from_bytes, AnswerBody.from_bytes,
                      KeyAnnouncementBody.from_bytes):
            with contextlib.suppress(PprmError):
                parse(plain)


def _text(fn: Callable[[str], object]) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return fn(text)
    return run


PARSERS: list[Callable[[bytes], object]] = [
    _signed_body,
    _open,
    lambda d: canonical.decode(d, "fuzz input"),
    QueryBody.from_bytes,
    AnswerBody.from_bytes,
    FollowUpBody.from_bytes,
    RefusalBody.from_bytes,
    KeyAnnouncementBody.from_bytes,
    BlindQueryBody.from_bytes,
    BlindAnswerBody.from_bytes,
    parse_card,
    seal_stream.parse,
    lambda d: _CTX.load_ciphertext(d, scale=1.0),
    lambda d: decode_answer(_CTX, d, 1.0),
    _text(lambda t: _MINTER.open(DE.public.fingerprint, t)),
    _text(parse_handle),
    unpack_delivery,  # the HTTP service's request framing (pprm.net.wire)
    BlindFollowUpBody.from_bytes,
    # An announced public key (seed and b): the responder's own expansion and checks.
    lambda d: blind_keys.load_announced(_CTX, d, b"-", b"-"),
    # The sealed masked answer the key service reads (one packed ciphertext per block).
    lambda d: masked_codec.unpack_masked(_LAYOUT, [d]),
    # The front <-> key service link: a frame (signature first) and its payload.
    lambda d: keylink.open_frame(d, keylink.REQUEST, FR, DE.public),
    keylink.Payload.from_bytes,
    # A query file: a bare message or a delivery (query plus key announcements).
    split_query_file,
]


def one_input(data: bytes) -> None:
    """Feed one input to the parser its first byte selects; only typed errors may escape."""
    if not data:
        return
    parser = PARSERS[data[0] % len(PARSERS)]
    with contextlib.suppress(PprmError):
        parser(data[1:])


def seeds() -> list[bytes]:
    """Valid inputs for each selector, so mutations start from well-formed messages."""
    hdr = Header("query", "DE", "FR", "11" * 16, NOW, NOW + 60, DIGEST, "sealed", "")
    query = QueryBody("C-1", "serious-crime", np.ones(8, dtype=np.float32)).to_bytes()
    boxed = DE.box_to(FR.public, query)
    wire = seal_envelope(DE, hdr, boxed)
    answer = AnswerBody("11" * 16, False, ()).to_bytes()
    out = [bytes([0]) + boxed, bytes([1]) + wire, bytes([2]) + query, bytes([3]) + query, bytes([4]) + answer,
           bytes([5]) + FollowUpBody("11" * 16, "blind-000001-000002").to_bytes(),
           bytes([15]) + b"blind-000001-000002", bytes([16]) + pack_delivery(wire, [wire]),
           bytes([17]) + BlindFollowUpBody("11" * 16, "blind-000001-000002", np.ones(8, dtype=np.float32)).to_bytes(),
           bytes([18]) + _PUBLIC]
    payload = keylink.Payload("hello", "ab" * 16, NOW, {"x": 1}, (b"blob",))
    out += [bytes([19]) + np.arange(_LAYOUT.n, dtype="<u8").tobytes(),
            bytes([20]) + keylink.seal_frame(keylink.REQUEST, payload, DE, FR.public),
            bytes([21]) + payload.to_bytes(), bytes([22]) + pack_delivery(wire, [wire]), bytes([22]) + wire]
    return out


if __name__ == "__main__":  # pragma: no cover - run by hand and by .ci/run
    import os
    import tempfile

    import atheris

    corpus = tempfile.mkdtemp(prefix="pprm-fuzz-corpus-")
    for i, seed in enumerate(seeds()):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as fh:
            fh.write(seed)
    args = [a for a in sys.argv if not a.startswith("-")]
    # Coverage feedback for every pprm function already imported above.
    atheris.instrument_all()
    atheris.Setup([*sys.argv, *([corpus] if len(args) == 1 else [])], one_input)
    atheris.Fuzz()
