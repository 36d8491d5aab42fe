"""The requester's outbox: typed records, the JSON every pprm version wrote, and pruning in DIR/state.db."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pprm import synthetic
from pprm.errors import ExpiredError, StateError
from pprm.matching.templates import normalise_probe
from pprm.node.outbox import (
    FOLLOWUP_WINDOW,
    REPLY_WINDOW,
    Outbox,
    SentBlindQuery,
    SentSealedQuery,
    keep_until,
    sent_query_from_json,
)
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.protocol import canonical
from pprm.protocol.envelope import _FRAME, CLOCK_SKEW, MAX_LIFETIME, Header
from pprm.protocol.messages import AnswerBody
from tests.helpers import INSECURE_BLIND, build_network, craft

QID = "ab" * 16


def header_of(blob: bytes) -> Header:
    """A message's header, read without verification (tests only)."""
    _magic, _v, _fpr, hlen, _blen = _FRAME.unpack_from(blob)
    return Header.from_json(canonical.decode(blob[_FRAME.size:_FRAME.size + hlen], "header"))


def _rows(directory: Path) -> dict[str, dict[str, Any]]:
    """The outbox's records as stored, read straight from DIR/state.db."""
    conn = sqlite3.connect(directory / "state.db")
    try:
        return {qid: json.loads(text) for qid, text in conn.execute("SELECT query_id, record FROM outbox")}
    finally:
        conn.close()

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
    with pytest.raises(StateError, match="outbox record is corrupt"):
        sent_query_from_json(QID, obj)


def test_a_legacy_file_is_imported_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    ids = {name: f"{i:032x}" for i, name in enumerate(LEGACY)}
    path.write_text(json.dumps({ids[name]: obj for name, obj in LEGACY.items()}))
    box = Outbox(str(path))
    records = box.load()
    assert {qid: rec.profile for qid, rec in records.items()} == {
        ids[name]: LEGACY[name].get("profile", "sealed") for name in LEGACY}
    # Imported into the database, and the file is gone (it held what pruning forgets).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]
    assert _rows(tmp_path) == {ids[name]: {k: v for k, v in obj.items() if k != "hits"}
                               for name, obj in LEGACY.items()}
    sealed = records[ids["sealed"]]
    box.put(dataclasses.replace(sealed, answer="12" * 16))
    again = Outbox(str(path)).load()
    assert again[ids["sealed"]].answer == "12" * 16
    assert {qid: rec for qid, rec in again.items() if qid != ids["sealed"]} == {
        qid: rec for qid, rec in records.items() if qid != ids["sealed"]}


@pytest.mark.parametrize("content", ["{", "[]", json.dumps({QID: {**LEGACY["sealed"], "to": 5}})])
def test_a_corrupt_legacy_file_is_a_state_error_and_is_left_alone(tmp_path: Path, content: str) -> None:
    (tmp_path / "outbox.json").write_text(content)
    box = Outbox(str(tmp_path / "outbox.json"))
    with pytest.raises(StateError, match=r"outbox\.json is corrupt"):
        box.get(QID)
    with pytest.raises(StateError, match=r"outbox\.json is corrupt"):
        box.put(sent_query_from_json(QID, LEGACY["sealed"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.json"]


def test_a_corrupt_record_in_the_database_is_a_state_error(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path / "outbox.json"))
    box.put(sent_query_from_json(QID, LEGACY["sealed"]))
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("UPDATE outbox SET record = '{\"to\": 1}'")
    conn.close()
    with pytest.raises(StateError, match=r"outbox record abababababababab in .*state\.db is corrupt"):
        box.get(QID)


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
    with pytest.raises(StateError, match="outbox record is corrupt"):
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
    assert "probe" not in _rows(tmp_path / "DE")[sealed.query_id]
    assert os.stat(tmp_path / "DE" / "state.db").st_mode & 0o777 == 0o600


# -- pruning: a record goes once no reply to it can verify ------------------------------------

def _sealed(qid: str, created: int, expires: int) -> SentSealedQuery:
    return SentSealedQuery(query_id=qid, peer="FR", case="C", purpose="serious-crime", created=created,
                           expires=expires)


def test_keep_until_is_the_last_second_a_reply_can_verify() -> None:
    sealed = _sealed(QID, 100, 3700)
    blind = SentBlindQuery(query_id=QID, peer="NL", case="C", purpose="serious-crime", created=100, expires=3700,
                           key_id="ef" * 16, candidates=("blind-000001-000002",))
    # Answered at the query's expiry + skew, valid MAX_LIFETIME, accepted up to + skew.
    assert keep_until(sealed) == keep_until(blind) == 3700 + 2 * CLOCK_SKEW + MAX_LIFETIME == 3700 + REPLY_WINDOW
    # A follow-up made at that last moment, valid MAX_LIFETIME, refused as late as that allows.
    followed = dataclasses.replace(blind, followups=("12" * 16,))
    assert keep_until(followed) == 3700 + 4 * CLOCK_SKEW + 3 * MAX_LIFETIME == 3700 + REPLY_WINDOW + FOLLOWUP_WINDOW


def test_prune_drops_exactly_what_can_no_longer_matter(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path / "outbox.json"))
    e = 1_700_003_600
    sealed = _sealed("01" * 16, e - 3600, e)
    blind = SentBlindQuery(query_id="02" * 16, peer="NL", case="C", purpose="serious-crime", created=e - 3600,
                           expires=e, key_id="ef" * 16, candidates=("blind-000001-000002",))
    followed = dataclasses.replace(blind, query_id="03" * 16, followups=("12" * 16,))
    assert box.put_many([sealed, blind, followed]) == 3
    assert box.prune(e + REPLY_WINDOW) == 0
    assert box.prune(e + REPLY_WINDOW + 1) == 2
    assert set(box.load()) == {followed.query_id}
    assert box.prune(e + REPLY_WINDOW + FOLLOWUP_WINDOW) == 0
    assert box.prune(e + REPLY_WINDOW + FOLLOWUP_WINDOW + 1) == 1
    assert box.load() == {}


def test_put_prunes_at_the_earlier_of_the_clock_and_the_record_time(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path / "outbox.json"))
    now = int(time.time())
    old = _sealed("01" * 16, now - 100 * 86400, now - 100 * 86400 + 3600)
    recent = _sealed("02" * 16, now - 86400, now - 86400 + 3600)
    box.put_many([old, recent])
    # A record made with a clock override far ahead prunes at the real clock: only the old one goes.
    box.put(_sealed("03" * 16, now + 400 * 86400, now + 400 * 86400 + 3600))
    assert set(box.load()) == {"02" * 16, "03" * 16}
    # A record made in the past prunes at its own time: nothing newer goes.
    box.put(_sealed("04" * 16, now - 200 * 86400, now - 200 * 86400 + 3600))
    assert set(box.load()) == {"02" * 16, "03" * 16, "04" * 16}


def test_the_latest_possible_answer_is_still_accepted_and_then_the_record_goes(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=20, seed=5)
    de, fr = nodes["DE"].state, nodes["FR"].state
    req = Requester(de)
    probe = synthetic.impostor_probe(512, 1)
    t0 = int(time.time()) - 120 * 86400  # in the past: put prunes at the record's time
    qid = header_of(req.query("FR", probe, "C-LATE", "serious-crime", now=t0)).id
    sent = req.outbox()[qid]
    # FR answers at the last moment it accepts the query, with the longest lifetime there is.
    answer = craft(fr, "DE", "answer", AnswerBody(qid, False, ()).to_bytes(), in_reply_to=qid,
                   now=sent.expires + CLOCK_SKEW, lifetime=MAX_LIFETIME)
    last = sent.expires + CLOCK_SKEW + MAX_LIFETIME + CLOCK_SKEW
    assert last == keep_until(sent)
    req.query("FR", probe, "C-OTHER", "serious-crime", now=last)  # prunes at `last`
    assert req.open(answer, now=last).hit is False
    assert req.outbox()[qid].answer == header_of(answer).id
    # One second later the answer no longer verifies, and the record goes with the next query.
    with pytest.raises(ExpiredError):
        req.open(answer, now=last + 1)
    req.query("FR", probe, "C-OTHER", "serious-crime", now=last + 1)
    assert qid not in req.outbox()


def test_a_dropped_probe_is_overwritten_in_the_database(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=20, seed=6, blind_params=INSECURE_BLIND)
    de = nodes["DE"].state
    req = Requester(de)
    sent = req.prepare("FR", synthetic.impostor_probe(512, 2), "C-GONE", "serious-crime", profile="blind")
    rec = req.outbox()[sent.query_id]
    assert isinstance(rec, SentBlindQuery) and rec.probe is not None
    kept = base64.b64encode(rec.probe).decode()
    needles = [kept[i:i + 16].encode() for i in range(0, len(kept) - 16, 64)]
    db = tmp_path / "DE" / "state.db"
    assert all(n in db.read_bytes() for n in needles)
    assert req.abandon(sent.query_id, "delivery failed") == sent.key_id
    assert req.outbox()[sent.query_id].probe is None  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp_path / "DE").iterdir() if p.name.startswith("state.db")) == ["state.db"]
    assert not any(n in db.read_bytes() for n in needles)
