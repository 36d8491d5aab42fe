"""A hostile requester's degenerate blind keys, at node level: refused, typed, and nothing changes.

A requester's public, Galois and relinearisation keys are attacker input
(docs/DESIGN.md section 4, trap 3). Built here with pprm's and SEAL's own
objects and edited in this process only, then announced in a correctly
signed message whose key id matches the material, so that the announcement
passes every check before the keys are loaded:

* a public key with ``b = 0`` (or ``b = P``, zero modulo the special prime);
* Galois keys with a zero part, or without the conjugation element;
* a relinearisation key with a zero part.

Each must be refused with a typed ``CiphertextError`` (a ``PprmError``, never
SEAL's untyped ``RuntimeError``), whether announced alone (``accept_keys``)
or delivered with a query under it (``answer(..., announcements=...)``),
and the responder's state directory must be byte-for-byte unchanged: the
key is not cached, so a later query naming it finds no key. A requester
that leaves the relinearisation key out entirely is refused when the
announcement is parsed (``MessageError``). The crypto-level refusals of every
kind of malformed key are in tests/matching/test_blind_attacks.py.

Network: AA requests, BB answers, on the test-only sets
INSECURE-sealed-n1024 / INSECURE-blind-n1024-v2; BB's gallery is 40 random
templates.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import tenseal.sealapi as seal
import zstandard

from pprm.crypto import blind_keys, seal_stream
from pprm.crypto.context import BlindContext
from pprm.errors import CiphertextError, KeyRotationError, MessageError, PprmError
from pprm.matching.blind_client import encrypt_probe
from pprm.node.keyservice import KeyService
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol.blind_messages import BlindQueryBody, KeyAnnouncementBody, pack_parts
from pprm.protocol.envelope import Header, new_id, seal_envelope
from tests.helpers import INSECURE_BLIND, load_switching_keys, new_state, snapshot

DIM = 512


@dataclass
class Net:
    a: State
    b: State
    rng: np.random.Generator


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    root = tmp_path_factory.mktemp("blind-key-refusal")
    a = new_state(root / "AA", "AA", blind_params=INSECURE_BLIND)
    b = new_state(root / "BB", "BB", blind_params=INSECURE_BLIND)
    a.trust(b.card_bytes)
    b.trust(a.card_bytes)
    rng = np.random.default_rng(404)
    templates = rng.standard_normal((40, DIM))
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    KeyService(b).enroll(templates.astype(np.float32), [f"BB-{i:03d}" for i in range(40)])
    return Net(a, b, rng)


@contextlib.contextmanager
def unchanged(state: State) -> Iterator[None]:
    """Assert that every file of ``state`` is the same (bytes and mode) after the block."""
    before = snapshot(state.dir)
    yield
    after = snapshot(state.dir)
    changed = sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))
    assert changed == [], f"{state.config.name} changed: {changed}"


# -- degenerate key material ----------------------------------------------------------------

def _zero_first_part(ctx: BlindContext, blob: bytes, cls: type[seal.GaloisKeys] | type[seal.RelinKeys],
                     index: int) -> bytes:
    """The seeded key stream with ``c0`` of the first component of key ``index`` set to zero (uncompressed)."""
    keys = load_switching_keys(ctx, cls, blob)  # kept alive: the part below points into it
    _meta, res = seal_stream.parse(ctx.save_bytes(keys.data()[index][0].data()))
    needle = res[0].astype("<u8").tobytes()
    _magic, _h, major, minor, compr, _r, _total = seal_stream.HEADER.unpack_from(blob)
    body = blob[seal_stream.HEADER.size:]
    if compr == 2:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 28)
    at = body.find(needle)
    assert at > 0 and body.find(needle, at + 1) < 0
    body = body[:at] + bytes(len(needle)) + body[at + len(needle):]
    head = seal_stream.HEADER.pack(seal_stream.SEAL_MAGIC, seal_stream.HEADER.size, major, minor, 0, 0,
                                   seal_stream.HEADER.size + len(body))
    return head + body


def _public_with_b(ctx: BlindContext, pair: blind_keys.BlindKeyPair, b: np.ndarray) -> bytes:
    head = len(blind_keys.PUBLIC_MAGIC) + blind_keys.SEED_BYTES
    return pair.public_blob[:head] + b.astype("<u8").tobytes()


def _b_zero(ctx: BlindContext, pair: blind_keys.BlindKeyPair) -> tuple[bytes, bytes, bytes]:
    b = np.zeros((len(ctx.key_moduli), ctx.n), dtype=np.uint64)
    return _public_with_b(ctx, pair, b), pair.galois_blob, pair.relin_blob


def _b_is_p(ctx: BlindContext, pair: blind_keys.BlindKeyPair) -> tuple[bytes, bytes, bytes]:
    special = ctx.key_moduli[-1]
    b = np.array([[special % q] * ctx.n for q in ctx.key_moduli], dtype=np.uint64)
    return _public_with_b(ctx, pair, b), pair.galois_blob, pair.relin_blob


def _galois_zero_part(ctx: BlindContext, pair: blind_keys.BlindKeyPair) -> tuple[bytes, bytes, bytes]:
    conj = seal.GaloisKeys.get_index(blind_keys.galois_elements(ctx)[-1])
    return pair.public_blob, _zero_first_part(ctx, pair.galois_blob, seal.GaloisKeys, conj), pair.relin_blob


def _galois_no_conjugation(ctx: BlindContext, pair: blind_keys.BlindKeyPair) -> tuple[bytes, bytes, bytes]:
    rotations = blind_keys.galois_elements(ctx)[:-1]
    galois = ctx.save_bytes(seal.KeyGenerator(ctx.seal, pair.secret_key).create_galois_keys(rotations))
    return pair.public_blob, galois, pair.relin_blob


def _relin_zero_part(ctx: BlindContext, pair: blind_keys.BlindKeyPair) -> tuple[bytes, bytes, bytes]:
    return pair.public_blob, pair.galois_blob, _zero_first_part(ctx, pair.relin_blob, seal.RelinKeys, 0)


DEGENERATE: dict[str, Callable[[BlindContext, blind_keys.BlindKeyPair], tuple[bytes, bytes, bytes]]] = {
    "public-b-zero": _b_zero,
    "public-b-is-P": _b_is_p,
    "galois-zero-part": _galois_zero_part,
    "galois-no-conjugation": _galois_no_conjugation,
    "relin-zero-part": _relin_zero_part,
}


# -- messages ---------------------------------------------------------------------------------

def _announcement(sender: State, to: str, material: tuple[bytes, bytes, bytes]) -> tuple[str, bytes]:
    """A correctly signed announcement of ``material`` under its true key id: ``(key id, message)``."""
    ctx = sender.blind_ctx
    public, galois, relin = material
    key_id = blind_keys.key_id_of(ctx.params.digest, public, galois, relin)
    t = int(time.time())
    body = KeyAnnouncementBody(key_id, t + 3600, public, galois, relin)
    h = Header("keys", sender.config.name, to, new_id(), t, body.expires, ctx.params.digest, "blind", "")
    return key_id, seal_envelope(sender.identity(), h, body.to_bytes())


def _query(sender: State, to: str, key_id: str, secret_key: seal.SecretKey, probe: np.ndarray) -> bytes:
    """A blind query under ``key_id``, the probe encrypted under ``secret_key``, signed and boxed."""
    ctx = sender.blind_ctx
    body = BlindQueryBody("C-DEGENERATE", "serious-crime", key_id, encrypt_probe(ctx, secret_key, probe))
    t = int(time.time())
    ident = sender.identity()
    h = Header("query", sender.config.name, to, new_id(), t, t + 3600, ctx.params.digest, "blind", "")
    return seal_envelope(ident, h, ident.box_to(sender.peer(to).identity, body.to_bytes()))


def _refused_typed(info: pytest.ExceptionInfo[CiphertextError]) -> None:
    assert isinstance(info.value, PprmError) and not isinstance(info.value, RuntimeError)


# -- tests ------------------------------------------------------------------------------------

def test_the_honest_announcement_is_accepted(net: Net) -> None:
    # The control: the same construction with the unedited material goes through.
    pair = blind_keys.generate(net.a.blind_ctx)
    key_id, ann = _announcement(net.a, "BB", (pair.public_blob, pair.galois_blob, pair.relin_blob))
    assert Responder(net.b).accept_keys(ann) == key_id


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_keys_announced_alone_are_refused(net: Net, case: str) -> None:
    pair = blind_keys.generate(net.a.blind_ctx)
    material = DEGENERATE[case](net.a.blind_ctx, pair)
    assert material != (pair.public_blob, pair.galois_blob, pair.relin_blob)
    key_id, ann = _announcement(net.a, "BB", material)
    with unchanged(net.b), pytest.raises(CiphertextError) as info:
        Responder(net.b).accept_keys(ann)
    _refused_typed(info)
    # Nothing was cached: a query naming the key finds none.
    query = _query(net.a, "BB", key_id, pair.secret_key, net.rng.standard_normal(DIM))
    with unchanged(net.b), pytest.raises(KeyRotationError, match="unknown"):
        Responder(net.b).answer(query)


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_keys_delivered_with_a_query_are_refused(net: Net, case: str) -> None:
    pair = blind_keys.generate(net.a.blind_ctx)
    key_id, ann = _announcement(net.a, "BB", DEGENERATE[case](net.a.blind_ctx, pair))
    query = _query(net.a, "BB", key_id, pair.secret_key, net.rng.standard_normal(DIM))
    with unchanged(net.b), pytest.raises(CiphertextError) as info:
        Responder(net.b).answer(query, announcements=[ann])
    _refused_typed(info)


def test_announcement_without_a_relinearisation_key_is_refused(net: Net) -> None:
    pair = blind_keys.generate(net.a.blind_ctx)
    ctx = net.a.blind_ctx
    key_id = blind_keys.key_id_of(ctx.params.digest, pair.public_blob, pair.galois_blob, b"")
    t = int(time.time())
    # Two parts where three are due: what an old client, or a hostile one, sends.
    body = pack_parts({"key_id": key_id, "expires": t + 3600}, [pair.public_blob, pair.galois_blob])
    h = Header("keys", "AA", "BB", new_id(), t, t + 3600, ctx.params.digest, "blind", "")
    with unchanged(net.b), pytest.raises(MessageError, match="relinearisation"):
        Responder(net.b).accept_keys(seal_envelope(net.a.identity(), h, body))
