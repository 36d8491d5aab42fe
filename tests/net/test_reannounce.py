"""``pprm ask`` (pprm.net.ask) when a peer does not know the key a blind query names.

DE asks HU in the blind profile. The first query of a case carries its key
announcement; here that query is made but never delivered, so the next
query of the case names a key HU has never seen. HU's service answers it
with the ``key`` error, and ``ask`` asks once more, within the same deadline,
under a fresh key sent with its announcement. HU runs in this process
(``thread_server``), on a small gallery, so that these tests stay fast; the
outcome is compared with the plaintext truth.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pprm import synthetic
from pprm.errors import KeyRotationError
from pprm.net import Directory, ask
from pprm.net.service import create_app
from pprm.node import responder
from pprm.node.outbox import SentBlindQuery
from pprm.node.requester import Requester
from tests.helpers import INSECURE_BLIND, Node, build_network, plaintext_hits, thread_server

N = 60
PURPOSE = "serious-crime"
TAU = 0.4


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[dict[str, Node], Directory]]:
    nodes = build_network(str(tmp_path), ("DE", "HU"), n=N, blind_params=INSECURE_BLIND, profiles={"HU": "blind"})
    with thread_server(create_app(nodes["HU"].state.dir)) as url:
        yield nodes, Directory({"HU": url})


def _events(node: Node, event: str) -> list[dict[str, Any]]:
    node.state.audit.check()
    return [e["data"] for e in node.state.audit.entries() if e.get("event") == event]


def _lose_the_announcement(de: Node, probe: Any, case: str) -> str:
    """DE makes the case's first query (with the key's announcement), which never reaches HU; its key id."""
    sent = Requester(de.state).prepare("HU", probe, case, PURPOSE)
    assert sent.profile == "blind" and sent.announcement is not None and sent.key_id is not None
    return sent.key_id


def test_ask_announces_a_fresh_key_when_the_peer_does_not_know_it(net: tuple[dict[str, Node], Directory]) -> None:
    nodes, directory = net
    de, hu = nodes["DE"], nodes["HU"]
    probe = synthetic.mate_probe(hu.gallery, 11, seed=8)
    truth = plaintext_hits(hu.gallery.templates, hu.gallery.references, probe, TAU)
    assert truth == {hu.gallery.references[11]}
    lost = _lose_the_announcement(de, probe, "C-REANNOUNCE")

    (o,) = ask(de.state, probe, ["HU"], case="C-REANNOUNCE", purpose=PURPOSE, directory=directory, timeout=30)
    assert o.status == "hit" and len(o.candidates) == len(truth), o
    assert "could not use the key of query" in o.detail and "asked again under a new key" in o.detail
    keys = {k.key_id: k for k in Requester(de.state).blind_keys(case="C-REANNOUNCE")}
    (fresh,) = set(keys) - {lost}
    assert keys[lost].retired is not None and keys[fresh].retired is None and keys[fresh].confirmed
    assert keys[fresh].announced_with == o.query_id
    # HU learned exactly one key (the fresh one) and answered exactly one query: the retry.
    assert [e["key_id"] for e in _events(hu, "keys")] == [fresh]
    assert [e["query_id"] for e in _events(hu, "answer")] == [o.query_id]
    assert [e["key_id"] for e in _events(de, "keys_retired")] == [lost]
    # The next query of the case uses the fresh key, with no announcement and no retry.
    (again,) = ask(de.state, probe, ["HU"], case="C-REANNOUNCE", purpose=PURPOSE, directory=directory, timeout=30)
    assert again.status == "hit" and again.detail == "" and len(again.candidates) == len(truth)
    assert again.query_id is not None
    record = Requester(de.state).outbox()[again.query_id]
    assert isinstance(record, SentBlindQuery) and record.key_id == fresh


def test_ask_retries_only_once_and_says_what_to_do(net: tuple[dict[str, Node], Directory],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    nodes, directory = net
    de, hu = nodes["DE"], nodes["HU"]
    probe = synthetic.impostor_probe(512, seed=12)
    assert plaintext_hits(hu.gallery.templates, hu.gallery.references, probe, TAU) == set()

    def no_key(*args: object, **kwargs: object) -> Any:
        raise KeyRotationError("unknown blind key id (the test's peer forgets every key)")

    # HU serves from this process: every blind query it answers now fails with the "key" error.
    monkeypatch.setattr(responder, "blind_keys", no_key)
    before = set(Requester(de.state).outbox())
    (o,) = ask(de.state, probe, ["HU"], case="C-FORGETS", purpose=PURPOSE, directory=directory, timeout=30)
    assert o.status == "error" and "key:" in o.detail
    assert "refused again under a new key" in o.detail and "ask its operator" in o.detail
    made = set(Requester(de.state).outbox()) - before
    assert len(made) == 2  # the query and one retry, never more
    keys = Requester(de.state).blind_keys(case="C-FORGETS")
    assert len(keys) == 2 and all(k.retired is not None for k in keys)  # the next query starts afresh
    assert _events(hu, "answer") == []
