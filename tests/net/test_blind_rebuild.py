"""``pprm serve`` keeps the blind database in memory and rebuilds it in the background after a gallery change.

HU is served in-process (the app on a thread), so the test can hold the
background build at a gate and look into the service. DE asks HU blind
queries in a stream while HU enrols new records: answers given while the
rebuild is held come from the previous gallery version (and say so in HU's
record of them), later ones from the new version; each is compared with the
plaintext truth of the version it was answered from. A follow-up on an
answer from the previous version still resolves after the rebuild pruned
that version's blocks, through the layout it keeps.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pprm import synthetic
from pprm.matching.diagonals import build_block
from pprm.net import Directory, ask, send_follow_up
from pprm.net.service import StateService, create_app
from pprm.node import blind_store
from pprm.node.keyservice import KeyService
from pprm.node.state import State
from tests.helpers import INSECURE_BLIND, Node, build_network, plaintext_hits, thread_server, wait_for

N = 300
PURPOSE = "serious-crime"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Node]:
    return build_network(str(tmp_path), ("DE", "HU"), n=N, seed=61, blind_params=INSECURE_BLIND,
                         profiles={"HU": "blind"})


class _Gate:
    """Holds builds made by the background rebuilder until opened (answers inside the worker are never held)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()

    def wrap(self, real: Any) -> Any:
        def held(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name == "pprm-blind-rebuild":
                self.entered.set()
                assert self.opened.wait(60)
            return real(*args, **kwargs)

        return held


def test_answers_during_a_rebuild_come_from_the_previous_version(world: dict[str, Node], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    de, hu = world["DE"].state, world["HU"].state
    old = world["HU"].gallery
    new = synthetic.make_gallery(40, dim=hu.config.dim, seed=977, prefix="NEW")
    # One probe per kind: a mate of an old record (a hit in both versions), a mate of a new one (only in the new).
    probes = {"old": synthetic.mate_probe(old, 5, seed=1), "new": synthetic.mate_probe(new, 3, seed=2)}
    tau = hu.config.threshold
    truth = {
        "v1": {k: plaintext_hits(old.templates, old.references, p, tau) for k, p in probes.items()},
        "v2": {k: plaintext_hits(np.concatenate([old.templates, new.templates]), [*old.references, *new.references],
                                 p, tau) for k, p in probes.items()},
    }
    assert truth["v1"] == {"old": {old.references[5]}, "new": set()}
    assert truth["v2"] == {"old": {old.references[5]}, "new": {new.references[3]}}

    # Prepared before the service starts: the service loads it in the background at start.
    ks = KeyService(State.open(hu.dir))
    v1 = hu.gallery().version
    assert hu.blind_store.prepare(hu.lock, lambda: hu.gallery().version, ks.export_templates).built
    gate = _Gate()
    monkeypatch.setattr(blind_store, "build_block", gate.wrap(build_block))

    app = create_app(hu.dir)
    svc: StateService = app.state.service
    store = svc.state.blind_store
    outcomes: list[dict[str, Any]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    with thread_server(app) as url:
        where = Directory({"HU": url})
        wait_for(lambda: store.in_memory == v1, what="the prepared database in memory")

        def stream() -> None:
            try:
                i = 0
                while not stop.is_set():
                    kind = ("old", "new")[i % 2]
                    (o,) = ask(de, probes[kind], ["HU"], case=f"C-{i}", purpose=PURPOSE, directory=where,
                               timeout=60)
                    outcomes.append({"kind": kind, "outcome": o, "at": time.monotonic()})
                    i += 1
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        asker = threading.Thread(target=stream, daemon=True)
        asker.start()
        wait_for(lambda: len(outcomes) >= 2 or failures, what="answers before the enrolment")
        KeyService(State.open(hu.dir)).enroll(new.templates, new.references)
        v2 = hu.gallery().version
        enrolled = time.monotonic()
        assert gate.entered.wait(30), "the service did not start rebuilding after the gallery changed"
        # The rebuild is held: the stream goes on, answered from the previous version.
        held_from = len(outcomes)
        wait_for(lambda: len(outcomes) >= held_from + 3 or failures, what="answers during the rebuild")
        assert store.in_memory == v1
        gate.opened.set()
        wait_for(lambda: store.in_memory == v2, what="the rebuilt database")
        after = len(outcomes)
        wait_for(lambda: len(outcomes) >= after + 3 or failures, what="answers after the rebuild")
        stop.set()
        asker.join(60)
        assert not failures, failures

        versions = {v1: "v1", v2: "v2"}
        seen = {"v1": 0, "v2": 0, "stale": 0}
        stale_hit: Any = None
        for rec in outcomes:
            o = rec["outcome"]
            assert o.profile == "blind" and o.status in ("hit", "no hit"), o
            answered = hu.blind_store.answered(o.query_id)
            label = versions[answered.version]  # every answer names the version it came from
            expected = truth[label][rec["kind"]]
            assert len(o.candidates) == len(expected), (label, rec["kind"], o)
            assert (o.status == "hit") == bool(expected)
            seen[label] += 1
            if label == "v1" and rec["at"] > enrolled:
                seen["stale"] += 1
                if rec["kind"] == "old":
                    stale_hit = o
        assert seen["stale"] >= 3 and seen["v2"] >= 3, seen
        # Every query asked after the rebuild finished is answered from the new version (the one in flight
        # at the switch may not be).
        assert all(hu.blind_store.answered(r["outcome"].query_id).version == v2 for r in outcomes[after + 1:])

        # The previous version's blocks are gone, its layout stays: a follow-up on a stale answer resolves.
        assert sorted(os.listdir(hu.path("private", "blind-db", v1))) == ["layout.sealed"]
        assert stale_hit is not None
        ack = send_follow_up(de, Path(stale_hit.answer_path).read_bytes(), stale_hit.candidates[0], where)
        assert ack["status"] == "resolved"
    resolved = [e["data"]["reference"] for e in hu.audit.entries() if e["event"] == "resolve"]
    assert resolved == [old.references[5]]
