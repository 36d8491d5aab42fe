"""Requester.prepare: the one place that picks a peer's profile and records the query."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import ParameterError
from pprm.node.outbox import Outbox
from pprm.node.requester import OutgoingQuery, Requester
from pprm.node.state import State
from pprm.protocol import canonical
from pprm.protocol.envelope import _FRAME, Header
from tests.helpers import INSECURE_BLIND, Node, build_network, snapshot


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    return build_network(str(tmp_path_factory.mktemp("prepare")), ["DE", "FR", "NL"], n=30, seed=12,
                         blind_params=INSECURE_BLIND, profiles={"NL": "blind"})


def _header(blob: bytes) -> Header:
    _magic, _v, _fpr, hlen, _blen = _FRAME.unpack_from(blob)
    return Header.from_json(canonical.decode(blob[_FRAME.size:_FRAME.size + hlen], "header"))


def _probe(nodes: dict[str, Node], peer: str) -> np.ndarray:
    return synthetic.mate_probe(nodes[peer].gallery, 1, 0)


@pytest.mark.parametrize(("peer", "override", "want"), [
    ("FR", None, "sealed"), ("NL", None, "blind"), ("NL", "sealed", "sealed"), ("FR", "blind", "blind"),
])
def test_the_profile_is_the_callers_else_the_configured_one(nodes, peer, override, want) -> None:
    de = nodes["DE"].state
    assert de.config.profile_for(peer) == ("blind" if peer == "NL" else "sealed")
    sent = Requester(de).prepare(peer, _probe(nodes, peer), f"C-{peer}-{override}", "serious-crime",
                                 profile=override)
    h = _header(sent.query)
    assert isinstance(sent, OutgoingQuery)
    assert (sent.peer, sent.profile, sent.query_id) == (peer, want, h.id) and h.profile == want
    if want == "sealed":
        assert sent.announcement is None and sent.key_id is None and sent.announcements == []
    else:
        assert sent.key_id is not None
        assert sent.announcements == ([] if sent.announcement is None else [sent.announcement])
    assert "query=" not in repr(sent) and "announcement=" not in repr(sent)  # message bytes stay out of logs


def test_an_unknown_profile_is_a_parameter_error_and_changes_nothing(nodes) -> None:
    de = nodes["DE"].state
    before = snapshot(de.dir)
    req = Requester(de)
    assert [req.profile_for("NL"), req.profile_for("FR"), req.profile_for("NL", "sealed")] == ["blind", "sealed",
                                                                                               "sealed"]
    for bad in ("open", "Sealed", "", " sealed"):
        with pytest.raises(ParameterError, match="profile"):
            req.profile_for("FR", bad)
        with pytest.raises(ParameterError, match="profile"):
            req.prepare("FR", _probe(nodes, "FR"), "C-X", "serious-crime", profile=bad)
    assert snapshot(de.dir) == before


@pytest.mark.parametrize("profile", ["sealed", "blind"])
def test_the_sink_sees_the_messages_before_anything_is_recorded(nodes, tmp_path: Path, profile) -> None:
    de: State = nodes["DE"].state
    got: list[tuple[bytes | None, bytes]] = []
    outbox = Outbox(de.path("outbox.json"))

    def sink(announcement: bytes | None, query: bytes) -> None:
        assert outbox.get(_header(query).id) is None
        got.append((announcement, query))

    sent = Requester(de).prepare("FR", _probe(nodes, "FR"), f"C-SINK-{profile}", "serious-crime",
                                 profile=profile, sink=sink)
    assert got == [(sent.announcement, sent.query)]
    assert sent.query_id in Requester(de).outbox()

    def failing(announcement: bytes | None, query: bytes) -> None:
        raise OSError("disk full")

    before = snapshot(de.dir)
    with pytest.raises(OSError, match="disk full"):
        Requester(de).prepare("FR", _probe(nodes, "FR"), f"C-FAIL-{profile}", "serious-crime",
                              profile=profile, sink=failing)
    assert snapshot(de.dir) == before
