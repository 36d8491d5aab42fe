"""The requester's outbox: typed records, and the JSON every pprm version wrote."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import StateError
from pprm.matching.templates import normalise_probe
from pprm.node.outbox import Outbox, SentBlindQuery, SentSealedQuery, sent_query_from_json
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from tests.helpers import INSECURE_BLIND, build_network

QID = "ab" * 16
# Records as earlier versions wrote them, key for key.
LEGACY: dict[str, dict[str, Any]] = {
    "sealed": {"to": "FR", "case": "C-1", "purpose": "serious-crime", "created": 100, "expires": 3700,
               "answer": None},
    "refused": {"to": "FR", "case": "C-2", "purpose": "serious-crime", "created": 100, "expires": 3700,
                "answer": "cd" * 16, "refused": "purpose"},
    "blind": {"to": "NL", "case": "C-3", "purpose": "missing-person", "created": 100, "expires": 3700,
              "answer": None, "profile": "blind", "key_id": "ef" * 16, "candidates": None, "hits": None},
    "blind-opened": {"to": "NL", "case": "C-3", "purpose": "missing-person", "created": 100, "expires": 3700,
                     "answer": "cd" * 16, "profile": "blind", "key_id": "ef" * 16,
                     "candidates": ["blind-000001-000002"], "hits": None},
}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_legacy_records_read_and_write_back_the_same_keys(name: str) -> None:
    obj = LEGACY[name]
    rec = sent_query_from_json(QID, obj)
    assert rec.query_id == QID and rec.peer == obj["to"] and rec.answer == obj["answer"]
    assert rec.profile == obj.get("profile", "sealed")
    if isinstance(rec, SentBlindQuery):
        assert rec.key_id == obj["key_id"]
        assert rec.candidates == (None if obj["candidates"] is None else tuple(obj["candidates"]))
    else:
        assert isinstance(rec, SentSealedQuery) and rec.refused == obj.get("refused")
    # Written back: the same keys, except the "hits" placeholder nothing ever read.
    assert rec.to_json() == {k: v for k, v in obj.items() if k != "hits"}
    assert sent_query_from_json(QID, rec.to_json()) == rec


@pytest.mark.parametrize("obj", [
    [], "x", {}, {**LEGACY["sealed"], "to": 5}, {**LEGACY["sealed"], "created": "100"},
    {**LEGACY["sealed"], "created": 1.5}, {**LEGACY["sealed"], "answer": 7},
    {**LEGACY["sealed"], "profile": "open"}, {k: v for k, v in LEGACY["blind"].items() if k != "key_id"},
    {**LEGACY["blind"], "candidates": "blind-000001-000002"}, {**LEGACY["blind"], "candidates": [1]},
])
def test_malformed_records_are_a_state_error(obj: object) -> None:
    with pytest.raises(StateError, match=r"outbox\.json is corrupt"):
        sent_query_from_json(QID, obj)


def test_a_legacy_file_opens_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    ids = {name: f"{i:032x}" for i, name in enumerate(LEGACY)}
    path.write_text(json.dumps({ids[name]: obj for name, obj in LEGACY.items()}))
    box = Outbox(str(path))
    records = box.load()
    assert {qid: rec.profile for qid, rec in records.items()} == {
        ids[name]: LEGACY[name].get("profile", "sealed") for name in LEGACY}
    sealed = records[ids["sealed"]]
    box.put(dataclasses.replace(sealed, answer="12" * 16))
    again = json.loads(path.read_text())
    assert again[ids["sealed"]]["answer"] == "12" * 16
    assert {qid: sent_query_from_json(qid, obj) for qid, obj in again.items() if qid != ids["sealed"]} == {
        qid: rec for qid, rec in records.items() if qid != ids["sealed"]}


def test_the_requester_keeps_typed_records(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=40, seed=3, blind_params=INSECURE_BLIND)
    de, fr = nodes["DE"].state, nodes["FR"].state
    req = Requester(de)
    sealed = req.prepare("FR", synthetic.mate_probe(nodes["FR"].gallery, 2, 0), "C-S", "serious-crime")
    blind = req.prepare("FR", synthetic.mate_probe(nodes["FR"].gallery, 3, 0), "C-B", "serious-crime",
                        profile="blind")
    box = req.outbox()
    assert isinstance(box[sealed.query_id], SentSealedQuery) and box[sealed.query_id].answer is None
    sent_blind = box[blind.query_id]
    assert isinstance(sent_blind, SentBlindQuery) and sent_blind.key_id == blind.key_id
    answer = Responder(fr).answer(blind.query, announcements=blind.announcements)
    opened = req.open(answer)
    rec = req.outbox()[blind.query_id]
    assert isinstance(rec, SentBlindQuery)
    assert rec.answer is not None and rec.candidates == opened.candidates


# -- the probe a blind record keeps for its follow-ups ----------------------------------------

def test_a_blind_record_keeps_its_probe_and_follow_ups() -> None:
    probe = np.array([0.5, -0.5, 0.25, 0.0], dtype="<f4")
    rec = SentBlindQuery(query_id=QID, peer="NL", case="C-4", purpose="missing-person", created=100, expires=3700,
                         key_id="ef" * 16, candidates=("blind-000001-000002",), probe=probe.tobytes(),
                         followups=("12" * 16,), followups_refused=("12" * 16,))
    obj = rec.to_json()
    assert obj["probe"] == base64.b64encode(probe.tobytes()).decode()
    assert (obj["followups"], obj["followups_refused"]) == (["12" * 16], ["12" * 16])
    back = sent_query_from_json(QID, json.loads(json.dumps(obj)))
    assert back == rec
    assert isinstance(back, SentBlindQuery)
    kept = back.probe_template()
    assert kept is not None and kept.dtype == np.float32 and np.array_equal(kept, probe)
    # The probe is biometric data: never in the repr (it is in outbox.json, 0600, by design).
    assert "probe" not in repr(rec) and obj["probe"] not in repr(rec)
    # Without them, the optional keys are not written (older records are written back key for key).
    bare = dataclasses.replace(rec, probe=None, followups=(), followups_refused=())
    assert set(bare.to_json()) == set(LEGACY["blind-opened"]) - {"hits"}
    assert bare.probe_template() is None


@pytest.mark.parametrize("extra", [
    {"probe": 5}, {"probe": "not base64!"}, {"probe": base64.b64encode(b"\x00" * 6).decode()}, {"probe": ""},
    {"followups": "12" * 16}, {"followups": [1]}, {"followups_refused": None},
])
def test_a_malformed_kept_probe_or_follow_up_list_is_a_state_error(extra: dict[str, Any]) -> None:
    with pytest.raises(StateError, match=r"outbox\.json is corrupt"):
        sent_query_from_json(QID, {**LEGACY["blind-opened"], **extra})


def test_the_requester_keeps_the_normalised_probe_of_a_blind_query(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=40, seed=4, blind_params=INSECURE_BLIND)
    de = nodes["DE"].state
    probe = synthetic.mate_probe(nodes["FR"].gallery, 5, 0) * 3.0
    req = Requester(de)
    blind = req.prepare("FR", probe, "C-P", "serious-crime", profile="blind")
    sealed = req.prepare("FR", probe, "C-P", "serious-crime")
    rec = req.outbox()[blind.query_id]
    assert isinstance(rec, SentBlindQuery)
    kept = rec.probe_template()
    assert kept is not None and np.array_equal(kept, normalise_probe(probe, de.config.dim))
    assert "probe" not in json.loads((tmp_path / "DE" / "outbox.json").read_text())[sealed.query_id]
    assert os.stat(tmp_path / "DE" / "outbox.json").st_mode & 0o777 == 0o600
