"""The blind profile at node level: Requester, Responder and KeyService on real states.

One module-wide network (AA queries, BB answers, CC is a third trusted
state) on the test-only sets INSECURE-sealed-n1024 / INSECURE-blind-n1024-v2.
BB's gallery fits one block (512 slots): 60 random templates, and a cluster
of AA.k + 3 near-copies of one template for the candidate cap. AA's k is 5
and BB's k is 3, so the requester's cap and the responder's follow-up cap
can be told apart. A blind answer costs a fraction of a second here; flows
that only read share fixtures; every refusal is checked to leave the refusing
state byte-for-byte unchanged.

The rotation rules under test (docs/DESIGN.md section 10): "a follow-up on a retired
key is refused, and a reused key id is rejected".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pprm.crypto import blind_keys
from pprm.crypto.answer_codec import answer_bytes
from pprm.errors import (
    AuthenticationError,
    CiphertextError,
    GalleryError,
    KeyRotationError,
    MessageError,
    NotAHitError,
    ReplayError,
    TokenError,
    UnknownPeerError,
)
from pprm.matching.blind_client import encrypt_probe
from pprm.matching.templates import normalise_probe
from pprm.node.keyservice import KeyService
from pprm.node.outbox import SentBlindQuery
from pprm.node.requester import OpenedAnswer, Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol import canonical
from pprm.protocol.blind_messages import BlindAnswerBody, BlindQueryBody, KeyAnnouncementBody, make_handle, parse_handle
from pprm.protocol.envelope import _FRAME, Header, new_id, seal_envelope
from pprm.protocol.messages import AnswerBody
from tests.helpers import (
    INSECURE_BLIND,
    craft,
    craft_blind_followup,
    leak_forms,
    new_state,
    plaintext_hits,
    snapshot,
    windows,
)

DIM = 512
TAU = 0.4
K_REQUESTER = 5
K_RESPONDER = 3
CLUSTER = K_REQUESTER + 3


# -- the network ------------------------------------------------------------------

@dataclass
class Net:
    a: State
    b: State
    c: State
    templates: np.ndarray      # BB's gallery, in enrolment order
    refs: list[str]
    rng: np.random.Generator

    def mate(self, index: int) -> np.ndarray:
        """A noisy copy of BB's template ``index`` (score about 0.95), which only that template matches."""
        probe = noisy(self.templates[index].astype(np.float64), self.rng)
        assert self.truth(probe) == {self.refs[index]}
        return probe

    def impostor(self) -> np.ndarray:
        return unit(self.rng.standard_normal(DIM))

    def truth(self, probe: np.ndarray) -> set[str]:
        return plaintext_hits(self.templates, self.refs, probe, TAU)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def noisy(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return unit(v + 0.3 * rng.standard_normal(v.shape) / np.sqrt(DIM))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    root = tmp_path_factory.mktemp("blind-node")
    a = new_state(root / "AA", "AA", k=K_REQUESTER, blind_params=INSECURE_BLIND)
    b = new_state(root / "BB", "BB", k=K_RESPONDER, blind_params=INSECURE_BLIND)
    c = new_state(root / "CC", "CC", blind_params=INSECURE_BLIND)
    for x in (a, b, c):
        for y in (a, b, c):
            if x is not y:
                x.trust(y.card_bytes)
    rng = np.random.default_rng(2024)
    base = unit(rng.standard_normal(DIM))
    random = rng.standard_normal((60, DIM))
    templates = np.vstack([random / np.linalg.norm(random, axis=1, keepdims=True),
                           np.stack([noisy(base, rng) for _ in range(CLUSTER)])]).astype(np.float32)
    refs = [f"BB-{i:05d}" for i in range(60)] + [f"CL-{i:02d}" for i in range(CLUSTER)]
    KeyService(b).enroll(templates, refs)
    return Net(a, b, c, templates, refs, rng)


def cluster_probe(net: Net) -> np.ndarray:
    probe = noisy(net.templates[60:].mean(axis=0), net.rng)
    assert net.truth(probe) == set(net.refs[60:])
    return probe


# -- message helpers ----------------------------------------------------------------

def header_of(blob: bytes) -> Header:
    """The header of a message, read without verification (tests only)."""
    _magic, _v, _fpr, hlen, _blen = _FRAME.unpack_from(blob)
    return Header.from_json(canonical.decode(blob[_FRAME.size:_FRAME.size + hlen], "header"))


def key_id_of_query(requester: State, query: bytes) -> str:
    rec = Requester(requester).outbox()[header_of(query).id]
    assert isinstance(rec, SentBlindQuery)
    return rec.key_id


def craft_blind(sender: State, to: str, kind: str, body: bytes, *, boxed: bool = True,
                in_reply_to: str = "") -> bytes:
    """A blind-profile message of any type, signed by ``sender``: what a misbehaving peer can send."""
    t = int(time.time())
    ident = sender.identity()
    h = Header(kind, sender.config.name, to, new_id(), t, t + 3600,
               sender.blind_ctx.params.digest, "blind", in_reply_to)
    return seal_envelope(ident, h, ident.box_to(sender.peer(to).identity, body) if boxed else body)


def followup(sender: State, to: str, query_id: str, handle: str, probe: np.ndarray) -> bytes:
    """A blind follow-up (carrying ``probe``) that skips the requester's own check that the handle is a candidate."""
    return craft_blind_followup(sender, to, query_id, handle, normalise_probe(probe, DIM))


def ask(net: Net, probe: np.ndarray, case: str, *, accept: bool = True) -> tuple[bytes | None, bytes]:
    """AA's blind query to BB; BB caches a new key announcement at once unless told not to."""
    ann, q = Requester(net.a).blind_query("BB", probe, case, "serious-crime")
    if ann is not None and accept:
        Responder(net.b).accept_keys(ann)
    return ann, q


@contextlib.contextmanager
def unchanged(*states: State) -> Iterator[None]:
    """Assert that every file of ``states`` is the same (bytes and mode) after the block."""
    before = [snapshot(state.dir) for state in states]
    yield
    for state, b in zip(states, before, strict=True):
        a = snapshot(state.dir)
        changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        assert changed == [], f"{state.config.name} changed: {changed}"


def handles_with_records(b: State, query_id: str) -> tuple[list[str], list[str]]:
    """(handles of occupied slots, handles of empty slots) of an answered query, read from BB's secrets."""
    rec = b.blind_store.answered(query_id)
    layout = b.blind_store.layout(rec.version)
    full: list[str] = []
    empty: list[str] = []
    for pos, blk in enumerate(rec.order):
        for slot, rid in enumerate(layout[blk]):
            (full if rid >= 0 else empty).append(make_handle(pos, slot))
    return full, empty


# -- end to end -------------------------------------------------------------------------

def test_mate_is_found_and_resolves_to_the_planted_reference(net: Net) -> None:
    probe = net.mate(7)
    assert net.truth(probe) == {"BB-00007"}
    ann, q = ask(net, probe, "E2E-MATE")
    assert ann is not None
    # Case and purpose are boxed; the announcement (public, not boxed) carries neither.
    for blob in (ann, q):
        assert b"E2E-MATE" not in blob and b"serious-crime" not in blob
    answer = Responder(net.b).answer(q)
    opened = Requester(net.a).open(answer)
    assert opened == OpenedAnswer("BB", header_of(q).id, True, opened.candidates)
    assert len(opened.candidates) == 1
    parse_handle(opened.candidates[0])
    fu = Requester(net.a).follow_up(answer, opened.candidates[0])
    res = KeyService(net.b).resolve(fu)
    assert (res.reference, res.requester, res.query_id) == ("BB-00007", "AA", opened.query_id)
    # Both logs record the blind exchange under the key id, and nothing about scores.
    kid = key_id_of_query(net.a, q)
    b_events = {e["event"]: e["data"] for e in net.b.audit.entries()}
    assert b_events["keys"]["key_id"] == kid
    assert b_events["resolve"] == {"peer": "AA", "query_id": opened.query_id, "followup_id": res.followup_id,
                                   "reference": "BB-00007", "profile": "blind", "key_id": kid}
    for e in net.a.audit.entries() + net.b.audit.entries():
        assert not {"score", "scores", "probe", "template", "values"} & set(e["data"])


def test_impostor_gives_no_candidates(net: Net) -> None:
    probe = net.impostor()
    assert net.truth(probe) == set()
    _ann, q = ask(net, probe, "E2E-IMPOSTOR")
    answer = Responder(net.b).answer(q)
    opened = Requester(net.a).open(answer)
    assert opened.hit is False and opened.candidates == ()
    with pytest.raises(TokenError):
        Requester(net.a).follow_up(answer, make_handle(0, 0))


def test_candidates_are_capped_at_the_requesters_k(net: Net) -> None:
    # 8 templates match; AA (k = 5) keeps a uniform choice of 5, never a ranking.
    _ann, q = ask(net, cluster_probe(net), "E2E-CLUSTER")
    answer = Responder(net.b).answer(q)
    opened = Requester(net.a).open(answer)
    assert opened.hit and len(opened.candidates) == K_REQUESTER == len(set(opened.candidates))
    # BB (k = 3) resolves at most 3 of them, each to a member of the cluster.
    req, ks = Requester(net.a), KeyService(net.b)
    found = [ks.resolve(req.follow_up(answer, h)).reference for h in opened.candidates[:K_RESPONDER]]
    assert len(set(found)) == K_RESPONDER and set(found) <= set(net.refs[60:])
    last = req.follow_up(answer, opened.candidates[K_RESPONDER])
    with unchanged(net.b), pytest.raises(TokenError, match=f"at most {K_RESPONDER}"):
        ks.resolve(last)


def test_the_responder_never_sees_the_probe(net: Net) -> None:
    probe = net.mate(21).astype(np.float32)
    forms = [probe.astype("<f4").tobytes(), unit(probe.astype(np.float64)).astype("<f4").tobytes(),
             unit(probe.astype(np.float64)).astype("<f8").tobytes()]
    raw_needles = [w for f in forms for w in windows(f, 12, 128)]
    text_needles = [enc for w in raw_needles for enc in leak_forms(w)]
    ann, q = ask(net, probe, "NO-PROBE", accept=False)
    assert ann is not None
    for blob in (ann, q):
        assert not [n for n in raw_needles if n in blob]
    Responder(net.b).accept_keys(ann)
    answer = Responder(net.b).answer(q)
    assert not [n for n in raw_needles if n in answer]
    # Nothing the responder keeps holds the probe in any encoding: raw bytes in
    # every file, hex and base64 in every file small enough to be metadata.
    files = snapshot(net.b.dir)
    assert not [name for name, data in files.items() if any(n in data for n in raw_needles)]
    small = {name: data for name, data in files.items() if len(data) < 1 << 20}
    assert not [name for name, data in small.items() if any(n in data for n in text_needles)]
    assert Requester(net.a).open(answer).hit  # and the answer was a real one


# -- key announcements ------------------------------------------------------------------

def test_a_key_is_announced_once_per_peer_and_case(net: Net) -> None:
    req = Requester(net.a)
    probe = net.impostor()
    ann1, q1 = req.blind_query("BB", probe, "ANN-1", "serious-crime")
    ann2, q2 = req.blind_query("BB", probe, "ANN-1", "serious-crime")
    assert ann1 is not None and ann2 is None
    kid = key_id_of_query(net.a, q1)
    assert key_id_of_query(net.a, q2) == kid
    h = header_of(ann1)
    assert (h.type, h.profile, h.params) == ("keys", "blind", net.a.blind_ctx.params.digest)
    body = _body_of(ann1)  # signed, not boxed: key material is public
    assert body.key_id == kid and body.expires == h.expires
    assert net.a.blind_keyring.entries()[kid]["case"] == "ANN-1"
    # Another case, or another peer, gets a key of its own.
    ann3, q3 = req.blind_query("BB", probe, "ANN-2", "serious-crime")
    ann4, q4 = req.blind_query("CC", probe, "ANN-1", "serious-crime")
    assert ann3 is not None and ann4 is not None
    ids = {kid, key_id_of_query(net.a, q3), key_id_of_query(net.a, q4)}
    assert len(ids) == 3


# -- key rotation -----------------------------------------------------------------------

@dataclass
class Rotation:
    """Four queries under one key; Q1..Q3 answered, Q1 and Q2 opened, Q1 followed up."""

    kid: str
    ann: bytes
    queries: list[bytes]
    answers: list[bytes]
    opened: list[OpenedAnswer]
    first_reference: str


@pytest.fixture(scope="module")
def rotation(net: Net) -> Rotation:
    req = Requester(net.a)
    ann, q1 = ask(net, cluster_probe(net), "ROT")
    assert ann is not None
    qs = [q1] + [ask(net, net.mate(i), "ROT")[1] for i in (11, 12, 13)]
    kid = key_id_of_query(net.a, q1)
    assert all(key_id_of_query(net.a, q) == kid for q in qs)
    answers = [Responder(net.b).answer(q) for q in qs[:3]]
    opened = [req.open(a) for a in answers[:2]]
    assert len(opened[0].candidates) == K_REQUESTER and len(opened[1].candidates) == 1
    ref = KeyService(net.b).resolve(req.follow_up(answers[0], opened[0].candidates[0])).reference
    assert ref in net.refs[60:]
    return Rotation(kid, ann, qs, answers, opened, ref)


def test_follow_up_on_another_query_under_a_retired_key_is_refused(net: Net, rotation: Rotation) -> None:
    req, ks = Requester(net.a), KeyService(net.b)
    # Q2 was opened before the key was retired, so AA can still name its candidate...
    fu = req.follow_up(rotation.answers[1], rotation.opened[1].candidates[0])
    # ...but BB refuses: its key was retired by the follow-up on Q1.
    with unchanged(net.b), pytest.raises(KeyRotationError, match="another query"):
        ks.resolve(fu)
    # Further follow-ups on Q1 itself stay possible (up to BB's k).
    ref = ks.resolve(req.follow_up(rotation.answers[0], rotation.opened[0].candidates[1])).reference
    assert ref in net.refs[60:] and ref != rotation.first_reference


def test_requester_retires_the_key_after_a_follow_up(net: Net, rotation: Rotation) -> None:
    req = Requester(net.a)
    entry = net.a.blind_keyring.entries()[rotation.kid]
    assert entry["retired"] == f"follow-up on {header_of(rotation.queries[0]).id}"
    assert not os.path.exists(net.a.path("private", "blind", f"{rotation.kid}.sk"))
    # Q3 was answered before the follow-up, but its answer arrives after: the key decrypts nothing more.
    with unchanged(net.a), pytest.raises(KeyRotationError, match="retired"):
        req.open(rotation.answers[2])
    # Answers opened before keep their (already decided) candidates.
    assert req.open(rotation.answers[0]) == rotation.opened[0]
    # The next query for the case comes with a fresh key.
    ann, q = req.blind_query("BB", net.impostor(), "ROT", "serious-crime")
    assert ann is not None and key_id_of_query(net.a, q) != rotation.kid


def test_query_under_a_key_the_responder_saw_retired_is_refused(net: Net, rotation: Rotation) -> None:
    # Q4 was built before the follow-up and arrives after it.
    with unchanged(net.b), pytest.raises(KeyRotationError, match="retired"):
        Responder(net.b).answer(rotation.queries[3])


def _announcement(sender: State, to: str, body: KeyAnnouncementBody) -> bytes:
    """A fresh key-announcement message (new message id), as Requester.blind_query builds one."""
    t = int(time.time())
    h = Header("keys", sender.config.name, to, new_id(), t, body.expires, sender.blind_ctx.params.digest,
               "blind", "")
    return seal_envelope(sender.identity(), h, body.to_bytes())


def _body_of(ann: bytes) -> KeyAnnouncementBody:
    hlen = _FRAME.unpack_from(ann)[3]
    return KeyAnnouncementBody.from_bytes(ann[_FRAME.size + hlen:-64])


def test_a_key_id_is_never_accepted_twice(net: Net, rotation: Rotation) -> None:
    resp = Responder(net.b)
    body = _body_of(rotation.ann)
    assert body.key_id == rotation.kid
    # The very same message is a replay...
    with unchanged(net.b), pytest.raises(ReplayError):
        resp.accept_keys(rotation.ann)
    # ...and a fresh message with the same key material is a reused key id.
    with unchanged(net.b), pytest.raises(KeyRotationError, match="never reused"):
        resp.accept_keys(_announcement(net.a, "BB", body))
    # Nor can another state claim the key as its own.
    with unchanged(net.b), pytest.raises(KeyRotationError, match="never reused"):
        resp.accept_keys(_announcement(net.c, "BB", body))


def test_a_key_id_must_match_its_key_material(net: Net, rotation: Rotation) -> None:
    resp = Responder(net.b)
    body = _body_of(rotation.ann)
    fresh = blind_keys.generate(net.a.blind_ctx)
    lies = [
        KeyAnnouncementBody("0" * 32, body.expires, body.public, body.galois, body.relin),      # made-up id
        KeyAnnouncementBody(fresh.key_id, body.expires, body.public, body.galois, body.relin),  # another key's id
        KeyAnnouncementBody(body.key_id, body.expires, fresh.public_blob, fresh.galois_blob, fresh.relin_blob),
        KeyAnnouncementBody(fresh.key_id, body.expires, fresh.public_blob, body.galois, fresh.relin_blob),  # mixed
        KeyAnnouncementBody(fresh.key_id, body.expires, fresh.public_blob, fresh.galois_blob, body.relin),  # mixed
    ]
    for lie in lies:
        with unchanged(net.b), pytest.raises(KeyRotationError, match="does not match"):
            resp.accept_keys(_announcement(net.a, "BB", lie))
    # The honest announcement of the fresh key is then accepted once.
    ok = KeyAnnouncementBody(fresh.key_id, body.expires, fresh.public_blob, fresh.galois_blob, fresh.relin_blob)
    assert resp.accept_keys(_announcement(net.a, "BB", ok)) == fresh.key_id


def _blind_query_body(sender: State, key_id: str, probe: np.ndarray) -> bytes:
    """A blind query body under ``key_id``, with the probe encrypted under some fresh key."""
    ct = encrypt_probe(sender.blind_ctx, blind_keys.generate(sender.blind_ctx).secret_key, probe)
    return BlindQueryBody("C-CRAFTED", "P", key_id, ct).to_bytes()


def test_query_naming_an_unknown_key_is_refused(net: Net) -> None:
    q = craft_blind(net.a, "BB", "query", _blind_query_body(net.a, "0123456789abcdef" * 2, net.mate(3)))
    with unchanged(net.b), pytest.raises(KeyRotationError, match="unknown"):
        Responder(net.b).answer(q)


def test_a_key_announced_by_one_state_is_not_usable_by_another(net: Net) -> None:
    _ann, q = ask(net, net.mate(4), "FOREIGN-KEY")
    kid = key_id_of_query(net.a, q)
    stolen = craft_blind(net.c, "BB", "query", _blind_query_body(net.c, kid, net.mate(4)))
    with unchanged(net.b), pytest.raises(KeyRotationError, match="another state"):
        Responder(net.b).answer(stolen)


def test_refused_blind_query_at_a_fresh_responder_changes_nothing(tmp_path: os.PathLike[str]) -> None:
    a = new_state(os.path.join(tmp_path, "AA"), "AA", blind_params=INSECURE_BLIND)
    d = new_state(os.path.join(tmp_path, "DD"), "DD", blind_params=INSECURE_BLIND)
    a.trust(d.card_bytes)
    d.trust(a.card_bytes)
    _ann, q = Requester(a).blind_query("DD", np.ones(DIM), "C", "serious-crime")  # the announcement is never delivered
    with unchanged(d), pytest.raises(KeyRotationError):
        Responder(d).answer(q)


# -- tampering and replays -------------------------------------------------------------------

@dataclass
class Fresh:
    """Messages not yet processed by their recipients."""

    announcement: bytes   # to BB, not yet accepted
    query: bytes          # to BB, under an accepted key, not yet answered
    answer: bytes         # to AA, not yet opened


@pytest.fixture(scope="module")
def fresh(net: Net) -> Iterator[Fresh]:
    _ann, q1 = ask(net, net.mate(30), "TAMPER-1")
    answer = Responder(net.b).answer(q1)
    ann2, _q2 = ask(net, net.mate(31), "TAMPER-2", accept=False)
    _none, q1b = ask(net, net.mate(32), "TAMPER-1")
    assert ann2 is not None and _none is None
    yield Fresh(ann2, q1b, answer)
    # Every tampered copy was refused without a trace: the originals still go through.
    assert Responder(net.b).accept_keys(ann2)
    assert Requester(net.a).open(Responder(net.b).answer(q1b)).candidates
    assert Requester(net.a).open(answer).candidates


def _flip(blob: bytes, pos: int, bit: int = 0) -> bytes:
    return blob[:pos] + bytes([blob[pos] ^ (1 << bit)]) + blob[pos + 1:]


def _receive(net: Net, kind: str, blob: bytes) -> None:
    if kind == "announcement":
        Responder(net.b).accept_keys(blob)
    elif kind == "query":
        Responder(net.b).answer(blob)
    else:
        Requester(net.a).open(blob)


def _recipient(net: Net, kind: str) -> State:
    return net.a if kind == "answer" else net.b


@pytest.mark.parametrize("kind", ["announcement", "query", "answer"])
@pytest.mark.parametrize("where", ["header", "body-start", "body-middle", "last-body-byte", "signature"])
def test_flipped_byte_is_refused(net: Net, fresh: Fresh, kind: str, where: str) -> None:
    blob = getattr(fresh, kind)
    _m, _v, _f, hlen, blen = _FRAME.unpack_from(blob)
    body = _FRAME.size + hlen
    pos = {"header": _FRAME.size + 5, "body-start": body, "body-middle": body + blen // 2,
           "last-body-byte": body + blen - 1, "signature": len(blob) - 1}[where]
    with unchanged(_recipient(net, kind)), pytest.raises(AuthenticationError):
        _receive(net, kind, _flip(blob, pos))


@settings(max_examples=15)
@given(data=st.data())
@pytest.mark.parametrize("kind", ["announcement", "query", "answer"])
def test_property_any_flipped_bit_is_refused(net: Net, fresh: Fresh, kind: str, data: st.DataObject) -> None:
    blob = getattr(fresh, kind)
    pos = data.draw(st.integers(0, len(blob) - 1), label="position")
    bad = _flip(blob, pos, data.draw(st.integers(0, 7), label="bit"))
    # Inside the frame a flip breaks the framing or names another sender;
    # anywhere after it, the signature fails.
    expected = AuthenticationError if pos >= _FRAME.size else (MessageError, UnknownPeerError)
    with unchanged(_recipient(net, kind)), pytest.raises(expected):
        _receive(net, kind, bad)


def test_second_answer_to_one_query_is_refused(net: Net, tmp_path: os.PathLike[str]) -> None:
    _ann, q = ask(net, net.mate(40), "REPLAY")
    # A responder restored from a copy answers the same query a second time.
    twin_dir = os.path.join(tmp_path, "BB-copy")
    shutil.copytree(net.b.dir, twin_dir)
    first = Responder(net.b).answer(q)
    second = Responder(State.open(twin_dir)).answer(q)
    assert header_of(first).id != header_of(second).id
    req = Requester(net.a)
    opened = req.open(first)
    with unchanged(net.a), pytest.raises(ReplayError):
        req.open(second)
    with unchanged(net.a), pytest.raises(ReplayError):
        req.follow_up(second, opened.candidates[0])
    assert req.open(first) == opened  # the accepted one opens again, to the same result
    received = [e for e in net.a.audit.entries()
                if e["event"] == "answer_received" and e["data"]["query_id"] == opened.query_id]
    assert len(received) == 1


def test_malformed_blind_answers_from_a_trusted_peer(net: Net) -> None:
    _ann, q = ask(net, net.impostor(), "CRAFTED-ANSWER")
    qid = header_of(q).id
    size = answer_bytes(net.a.blind_ctx)
    transparent = b"\x01" * (size // 2) + bytes(size // 2)
    cases = [
        (BlindAnswerBody(qid, (b"",)), MessageError),                       # empty block
        (BlindAnswerBody(qid, (b"\x01" * (size - 6),)), CiphertextError),   # one coefficient short
        (BlindAnswerBody(qid, (transparent,)), CiphertextError),             # c1 = 0: no ciphertext
        (BlindAnswerBody(qid, (b"\xff" * size,)), CiphertextError),         # coefficients >= q0
        (BlindAnswerBody("ab" * 16, (b"\x01" * size,)), MessageError),      # body names another query
    ]
    req = Requester(net.a)
    for body, exc in cases:
        blob = craft_blind(net.b, "AA", "answer", body.to_bytes(), in_reply_to=qid)
        with unchanged(net.a), pytest.raises(exc):
            req.open(blob)
    # An answer in the other profile, and a message of another type.
    sealed = craft(net.b, "AA", "answer", AnswerBody(qid, False, ()).to_bytes(), in_reply_to=qid)
    with unchanged(net.a), pytest.raises(MessageError, match="another profile"):
        req.open(sealed)
    not_an_answer = craft_blind(net.b, "AA", "keys", b"", boxed=False)
    with unchanged(net.a), pytest.raises(MessageError, match="expected an answer"):
        req.open(not_an_answer)


# -- follow-ups ----------------------------------------------------------------------------

def test_follow_ups_per_answer_are_capped_and_checked(net: Net) -> None:
    probe = net.mate(50)
    _ann, q = ask(net, probe, "FOLLOW-UPS")
    answer = Responder(net.b).answer(q)
    opened = Requester(net.a).open(answer)
    qid = opened.query_id
    (hit,) = opened.candidates
    occupied, empty = handles_with_records(net.b, qid)
    assert hit in occupied and empty
    ks = KeyService(net.b)
    refused = [
        (followup(net.a, "BB", qid, empty[0], probe), GalleryError, "no record"),       # an empty slot
        (followup(net.a, "BB", qid, make_handle(1, 0), probe), TokenError, "outside"),  # one block only
        (followup(net.a, "BB", qid, make_handle(0, net.b.blind_ctx.params.templates_per_block), probe), TokenError,
         "outside"),
        (followup(net.a, "BB", "ab" * 16, hit, probe), GalleryError, "no blind answer"),
        (followup(net.c, "BB", qid, hit, probe), TokenError, "another state"),          # CC asks about AA's answer
        (followup(net.a, "BB", qid, "A" * 16, probe), MessageError, "handle"),           # not a blind handle
    ]
    for blob, exc, why in refused:
        with unchanged(net.b), pytest.raises(exc, match=why):
            ks.resolve(blob)
    assert ks.resolve(Requester(net.a).follow_up(answer, hit)).reference == "BB-00050"
    again = Requester(net.a).follow_up(answer, hit)
    with unchanged(net.b), pytest.raises(TokenError, match="already"):
        ks.resolve(again)
    # BB never sees AA's decryptions, but the probe proves the hit: a
    # misbehaving requester fishing in occupied slots is refused (and the
    # refusals count against k, see tests/node/test_blind_followup.py).
    others = [h for h in occupied if h != hit]
    for h in others[:K_RESPONDER - 1]:
        with pytest.raises(NotAHitError):
            ks.resolve(followup(net.a, "BB", qid, h, probe))
    with unchanged(net.b), pytest.raises(TokenError, match=f"at most {K_RESPONDER}"):
        ks.resolve(followup(net.a, "BB", qid, others[K_RESPONDER], probe))


def test_the_same_handle_cannot_be_followed_up_twice_under_another_spelling(net: Net) -> None:
    # "blind-...\n" once passed the token and handle patterns ('$' in re.match)
    # and, as a different string, escaped the "already followed up" check.
    _ann, q = ask(net, net.mate(51), "NEWLINE")
    answer = Responder(net.b).answer(q)
    (hit,) = Requester(net.a).open(answer).candidates
    ks = KeyService(net.b)
    assert ks.resolve(Requester(net.a).follow_up(answer, hit)).reference == "BB-00051"
    with unchanged(net.b), pytest.raises(MessageError, match="token"):
        ks.resolve(followup(net.a, "BB", header_of(q).id, hit + "\n", net.templates[51]))


def test_a_key_past_its_lifetime_is_retired_and_its_secret_key_deleted(tmp_path: os.PathLike[str]) -> None:
    a = new_state(os.path.join(tmp_path, "AA"), "AA", blind_params=INSECURE_BLIND)
    b = new_state(os.path.join(tmp_path, "BB"), "BB", blind_params=INSECURE_BLIND)
    a.trust(b.card_bytes)
    b.trust(a.card_bytes)
    t0 = 1_800_000_000
    ann, _q = Requester(a).blind_query("BB", np.ones(DIM), "C-LIFE", "serious-crime", now=t0)
    assert ann is not None
    (kid,) = a.blind_keyring.entries()
    sk_file = os.path.join(a.dir, "private", "blind", f"{kid}.sk")
    assert os.path.exists(sk_file)
    later = t0 + a.config.blind_key_ttl + 1
    ann2, _q2 = Requester(a).blind_query("BB", np.ones(DIM), "C-LIFE", "serious-crime", now=later)
    assert ann2 is not None  # a fresh key for the same case
    assert a.blind_keyring.entries()[kid]["retired"] == "lifetime ended"
    assert not os.path.exists(sk_file)
