"""Queries waiting together at pprm serve's worker are matched in one pass, and answered each on its own.

Deliveries stored before the service starts (a backlog) are queued before
its worker runs, so the worker takes them as one batch: the sealed queries
go through :meth:`~pprm.node.responder.Responder.respond_many` (one pass
over the gallery), a delivery that does not unpack gets its own failure, and
every requester opens its own answer with the right result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import PprmError
from pprm.net.inbox import Inbox
from pprm.net.wire import pack_delivery
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder, Response
from pprm.node.state import State
from tests.helpers import build_network, plaintext_hits
from tests.net.test_service_restart import answer_backlog


def test_a_backlog_is_matched_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = build_network(str(tmp_path), ("DE", "FR", "NL"), n=400, seed=43)
    fr = nodes["FR"].state
    gal = nodes["FR"].gallery
    inbox = Inbox(fr.dir)
    asked: list[tuple[str, str, np.ndarray]] = []
    for i, sender in enumerate(("DE", "NL", "DE", "NL", "DE")):
        probe = synthetic.mate_probe(gal, 37 * i + 5, seed=i) if i != 3 else synthetic.impostor_probe(512, seed=3)
        query = Requester(nodes[sender].state).query("FR", probe, f"C-{i}", "serious-crime")
        qid = KeyService(fr).query_header(query).id
        inbox.accept(sender, qid, pack_delivery(query))
        asked.append((sender, qid, probe))
    inbox.accept("DE", "f" * 32, b"not a delivery")

    sizes: list[int] = []
    real = Responder.respond_many

    def counted(self: Responder, queries: list[bytes], **kw: object) -> list[Response | PprmError]:
        sizes.append(len(queries))
        return real(self, queries, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Responder, "respond_many", counted)
    answer_backlog(fr.dir, inbox)
    assert inbox.pending() == []
    assert sizes == [5]  # the five queries in one pass; the broken delivery on its own
    assert inbox.reply("DE", "f" * 32) is None and inbox.failure("DE", "f" * 32) is not None
    for sender, qid, probe in asked:
        reply = inbox.reply(sender, qid)
        assert reply is not None
        opened = Requester(nodes[sender].state).open(reply)
        truth = plaintext_hits(gal.templates, gal.references, probe, fr.config.threshold)
        assert opened.hit == bool(truth)
    events = [e["event"] for e in State.open(fr.dir).audit.entries()]
    assert events.count("answer") == 5
    State.open(fr.dir).audit.verify()
