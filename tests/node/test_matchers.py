"""The responder calls one interface per profile, whichever matcher it was given."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pprm import synthetic
from pprm.errors import CiphertextError
from pprm.matching.blind import BlindAnswer, BlindMatcher, BlindRequest
from pprm.matching.diagonals import BlindDatabase
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.protocols import BlindMatching, Progress, SealedMatching
from pprm.matching.sealed import MaskedResult
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.protocol.blind_messages import BlindQueryBody
from pprm.protocol.envelope import Header, new_id, seal_envelope
from tests.helpers import INSECURE_BLIND, Node, build_network, snapshot


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    return build_network(str(tmp_path_factory.mktemp("matchers")), ["DE", "FR"], n=50, seed=33,
                         blind_params=INSECURE_BLIND)


class Recording:
    """Wraps a matcher of either profile and records what the responder asked of it."""

    def __init__(self, inner: SealedMatching | BlindMatching) -> None:
        self.inner = inner
        self.calls: list[tuple[Any, ...]] = []

    def match(self, probe, threshold: float, progress: Progress | None = None) -> MaskedResult:
        self.calls.append(("match", threshold))
        return self.inner.match(probe, threshold, progress)  # type: ignore[union-attr]

    def answer_blind(self, request: BlindRequest, tau: float, progress: Progress | None = None) -> BlindAnswer:
        self.calls.append(("answer_blind", request, tau))
        return self.inner.answer_blind(request, tau, progress)  # type: ignore[union-attr]


def test_both_profiles_go_through_their_matcher_interface(nodes) -> None:
    de, fr = nodes["DE"].state, nodes["FR"].state
    made: list[Recording] = []

    def sealed(gallery: EncryptedGallery) -> SealedMatching:
        made.append(Recording(fr.matcher(gallery)))
        return made[-1]

    def blind(database: BlindDatabase, version: str) -> BlindMatching:
        assert version == fr.gallery().version
        made.append(Recording(BlindMatcher(fr.blind_ctx, database)))
        return made[-1]

    responder = Responder(fr, matcher=sealed, blind=blind)
    req = Requester(de)
    probe = synthetic.mate_probe(nodes["FR"].gallery, 4, seed=1)
    s = req.prepare("FR", probe, "C-M1", "serious-crime", profile="sealed")
    assert req.open(responder.answer(s.query)).hit
    b = req.prepare("FR", probe, "C-M2", "serious-crime", profile="blind")
    assert req.open(responder.answer(b.query, announcements=b.announcements)).hit
    assert [c[0] for m in made for c in m.calls] == ["match", "answer_blind"]
    _name, request, tau = made[1].calls[0]
    assert isinstance(request, BlindRequest) and tau == fr.config.threshold
    assert request.keys.key_id == b.key_id
    assert "probe=" not in repr(request) and "ciphertext=" not in repr(request)


def test_a_malformed_blind_probe_changes_nothing(tmp_path: Path) -> None:
    """The probe is parsed before the blind database is built (or anything recorded)."""
    fresh = build_network(str(tmp_path), ["DE", "FR"], n=30, seed=34, blind_params=INSECURE_BLIND)
    de, fr = fresh["DE"].state, fresh["FR"].state
    good = Requester(de).prepare("FR", synthetic.impostor_probe(512, seed=9), "C-M3", "serious-crime",
                                 profile="blind")
    assert good.announcement is not None and good.key_id is not None
    Responder(fr).accept_keys(good.announcement)
    before = snapshot(fr.dir)
    t = int(time.time())
    ident = de.identity()
    body = BlindQueryBody("C-M3", "serious-crime", good.key_id, b"\x00" * 64)
    h = Header("query", "DE", "FR", new_id(), t, t + 600, fr.config.blind_parameter_set.digest, "blind", "")
    bad = seal_envelope(ident, h, ident.box_to(fr.card.identity, body.to_bytes()))
    with pytest.raises(CiphertextError):
        Responder(fr).answer(bad)
    assert snapshot(fr.dir) == before
    assert not Path(fr.path("private", "blind-db")).exists()
