"""Every message is verified once on its way through a role: at the door, signature first.

Signature checks are counted where every one of them happens,
:meth:`PublicIdentity.verify`; only signed messages (``PPRM`` frames) are
counted, not the cards and audit heads the same function also checks.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pprm import synthetic
from pprm.crypto.identity import PublicIdentity
from pprm.errors import AuthenticationError, RefusedError
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol import canonical
from pprm.protocol.envelope import _FRAME, MAGIC, Header
from tests.helpers import INSECURE_BLIND, new_state

N = 300
EXTRA = "tax-evasion"  # AA may send it; BB does not answer it


def _header(frame: bytes) -> Header:
    _magic, _v, _fpr, hlen, _blen = _FRAME.unpack_from(frame)
    return Header.from_json(canonical.decode(frame[_FRAME.size:_FRAME.size + hlen], "header"))


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    """``(message type, message id)`` -> how many times its signature was checked."""
    seen: Counter[tuple[str, str]] = Counter()
    real = PublicIdentity.verify

    def counting(self: PublicIdentity, message: bytes, signature: bytes) -> None:
        if message.startswith(MAGIC):
            h = _header(message)
            seen[h.type, h.id] += 1
        real(self, message, signature)

    monkeypatch.setattr(PublicIdentity, "verify", counting)
    return seen


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> tuple[State, State, synthetic.SyntheticGallery]:
    root = tmp_path_factory.mktemp("verify-once")
    a = new_state(root / "AA", "AA", blind_params=INSECURE_BLIND,
                  purposes=["serious-crime", "missing-person", EXTRA])
    b = new_state(root / "BB", "BB", blind_params=INSECURE_BLIND)
    a.trust(b.card_bytes)
    b.trust(a.card_bytes)
    gal = synthetic.make_gallery(N, dim=512, seed=41, prefix="BB")
    KeyService(b).enroll(gal.templates, gal.references)
    return a, b, gal


def _ids(blob: bytes | None) -> tuple[str, str]:
    assert blob is not None
    h = _header(blob)
    return h.type, h.id


def test_a_sealed_answer_and_its_follow_up_verify_each_message_once(states, checks) -> None:
    a, b, gal = states
    req = Requester(a)
    q = req.prepare("BB", synthetic.mate_probe(gal, 7, seed=1), "C-V1", "serious-crime", profile="sealed")
    assert not checks, "building a query verifies nothing"
    answer = Responder(b).answer(q.query)
    assert checks == Counter({_ids(q.query): 1})
    checks.clear()
    opened = req.open(answer)
    assert opened.hit and checks == Counter({_ids(answer): 1})
    checks.clear()
    fu = req.prepare_follow_up(answer, opened.candidates[0])
    assert (fu.peer, fu.query_id) == ("BB", q.query_id)
    assert checks == Counter({_ids(answer): 1})
    checks.clear()
    assert KeyService(b).resolve(fu.message).reference == gal.references[7]
    assert checks == Counter({_ids(fu.message): 1})


def test_a_blind_answer_and_its_follow_up_verify_each_message_once(states, checks) -> None:
    a, b, gal = states
    req = Requester(a)
    q = req.prepare("BB", synthetic.mate_probe(gal, 9, seed=2), "C-V2", "serious-crime", profile="blind")
    assert q.announcement is not None and q.key_id is not None
    answer = Responder(b).answer(q.query, announcements=q.announcements)
    # The query and the key announcement delivered with it: once each.
    assert checks == Counter({_ids(q.query): 1, _ids(q.announcement): 1})
    checks.clear()
    fu = req.follow_up(answer, req.open(answer).candidates[0])
    # Opening, then following up: the answer is verified by each step, once.
    assert checks == Counter({_ids(answer): 2})
    checks.clear()
    assert KeyService(b).resolve(fu).reference == gal.references[9]
    assert checks == Counter({_ids(fu): 1})


@pytest.mark.parametrize("profile", ["sealed", "blind"])
def test_a_refusal_verifies_the_query_once(states, checks, profile) -> None:
    a, b, gal = states
    req = Requester(a)
    q = req.prepare("BB", synthetic.mate_probe(gal, 3, seed=3), f"C-R-{profile}", EXTRA, profile=profile)
    res = Responder(b).respond(q.query, announcements=q.announcements)
    assert res.refused == "purpose"
    want = Counter({_ids(q.query): 1})
    if q.announcement is not None:
        want[_ids(q.announcement)] = 1
    assert checks == want
    checks.clear()
    with pytest.raises(RefusedError):
        req.open(res.message)
    assert checks == Counter({_ids(res.message): 1})


def test_a_key_announcement_alone_is_verified_once(states, checks) -> None:
    a, b, _gal = states
    q = Requester(a).prepare("BB", synthetic.impostor_probe(512, seed=5), "C-K1", "serious-crime", profile="blind")
    assert q.announcement is not None
    assert Responder(b).accept_keys(q.announcement) == q.key_id
    assert checks == Counter({_ids(q.announcement): 1})


def test_verification_still_comes_first(states, checks) -> None:
    """A tampered query fails its one signature check, before anything of its body is read."""
    a, b, gal = states
    q = Requester(a).prepare("BB", synthetic.mate_probe(gal, 4, seed=4), "C-T", "serious-crime", profile="sealed")
    bad = bytearray(q.query)
    bad[-5] ^= 1
    with pytest.raises(AuthenticationError, match="does not verify"):
        Responder(b).answer(bytes(bad))
    assert sum(checks.values()) == 1
