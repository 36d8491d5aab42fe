"""The audit log: a hash chain that names the first damaged line, and carries no biometrics."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from _helpers import build_network, leak_forms, windows

from pprm import synthetic
from pprm.errors import StateError
from pprm.matching.templates import normalise_probe
from pprm.node.audit import _FORBIDDEN, GENESIS, AuditLog, _hash
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.protocol.canonical import encode

N_LINES = 6


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    a = AuditLog(str(tmp_path / "audit.log"))
    a.append("init", state="DE", k=10)
    a.append("trust", peer="FR", fingerprint="ab" * 16)
    a.append("query", peer="FR", query_id="11" * 16, case="C-1", purpose="test")
    a.append("answer_received", peer="FR", query_id="11" * 16, hit=True, candidates=2)
    a.append("followup", peer="FR", query_id="11" * 16, followup_id="22" * 16)
    a.append("note", text=None, flag=False)
    return a


def _lines(a: AuditLog) -> list[bytes]:
    with open(a.path, "rb") as fh:
        return fh.read().splitlines(keepends=True)


def _write(a: AuditLog, lines: list[bytes]) -> None:
    with open(a.path, "wb") as fh:
        fh.write(b"".join(lines))


def _breaks_at(a: AuditLog, line: int) -> None:
    with pytest.raises(StateError, match=rf"line {line}\b"):
        a.verify()


def test_chain_verifies(log: AuditLog) -> None:
    assert log.verify() == N_LINES
    entries = log.entries()
    assert [e["seq"] for e in entries] == list(range(N_LINES))
    assert entries[0]["prev"] == GENESIS
    for prev, cur in itertools.pairwise(entries):
        assert cur["prev"] == prev["hash"]
    assert entries[3]["data"] == {"peer": "FR", "query_id": "11" * 16, "hit": True, "candidates": 2}


def test_empty_and_missing_logs(tmp_path: Path) -> None:
    assert AuditLog(str(tmp_path / "none.log")).verify() == 0
    assert AuditLog(str(tmp_path / "none.log")).entries() == []
    (tmp_path / "empty.log").write_bytes(b"")
    a = AuditLog(str(tmp_path / "empty.log"))
    a.append("first")
    assert a.verify() == 1


def test_log_file_is_private(log: AuditLog) -> None:
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600


@pytest.mark.parametrize("index", range(N_LINES))
def test_editing_any_line_is_detected(log: AuditLog, index: int) -> None:
    lines = _lines(log)
    entry = json.loads(lines[index])
    entry["time"] += 1  # a small, still canonical edit
    lines[index] = encode(entry) + b"\n"
    _write(log, lines)
    _breaks_at(log, index + 1)


@pytest.mark.parametrize("index", range(N_LINES - 1))
def test_rehashed_edit_is_detected_at_the_next_line(log: AuditLog, index: int) -> None:
    # The forger recomputes the edited line's own hash; the next line's
    # ``prev`` still names the original.
    lines = _lines(log)
    entry = json.loads(lines[index])
    entry["data"]["peer" if "peer" in entry["data"] else next(iter(entry["data"]))] = "XX"
    del entry["hash"]
    entry["hash"] = _hash(entry)
    lines[index] = encode(entry) + b"\n"
    _write(log, lines)
    _breaks_at(log, index + 2)


@pytest.mark.parametrize("index", range(N_LINES - 1))
def test_deleting_a_line_is_detected(log: AuditLog, index: int) -> None:
    lines = _lines(log)
    del lines[index]
    _write(log, lines)
    _breaks_at(log, index + 1)


def test_deleting_the_last_line_needs_an_external_anchor(log: AuditLog) -> None:
    # A bare hash chain cannot tell a shortened log from a shorter one; what
    # it does guarantee is that the count drops, which a verifier holding the
    # previous count (or a signed checkpoint) detects.
    lines = _lines(log)
    _write(log, lines[:-1])
    assert log.verify() == N_LINES - 1


@pytest.mark.parametrize("index", range(N_LINES - 1))
def test_swapping_two_lines_is_detected(log: AuditLog, index: int) -> None:
    lines = _lines(log)
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    _write(log, lines)
    _breaks_at(log, index + 1)


def test_swapping_distant_lines_is_detected(log: AuditLog) -> None:
    lines = _lines(log)
    lines[1], lines[4] = lines[4], lines[1]
    _write(log, lines)
    _breaks_at(log, 2)


def test_truncating_mid_line_is_detected(log: AuditLog) -> None:
    blob = b"".join(_lines(log))
    ends = [m.end() for m in re.finditer(rb"\n", blob)]
    starts = [0, *ends[:-1]]
    for cut in range(1, len(blob)):
        if cut in ends or cut + 1 in ends:
            continue  # whole lines (or just a final newline) removed: see above
        line = next(i + 1 for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if s < cut < e)
        with open(log.path, "wb") as fh:
            fh.write(blob[:cut])
        with pytest.raises(StateError, match=rf"line {line} is damaged"):
            log.verify()


def test_append_after_damage_is_refused(log: AuditLog) -> None:
    blob = b"".join(_lines(log))
    with open(log.path, "wb") as fh:
        fh.write(blob[:-20])
    with pytest.raises(StateError, match="damaged"):
        log.append("more", peer="FR")
    with open(log.path, "rb") as fh:
        assert fh.read() == blob[:-20]


@pytest.mark.parametrize("field", sorted(_FORBIDDEN | {"probe", "score", "template"}))
def test_forbidden_fields_are_refused(log: AuditLog, field: str) -> None:
    before = _lines(log)
    with pytest.raises(StateError, match=field):
        log.append("answer", peer="FR", **{field: "x"})
    assert _lines(log) == before


@pytest.mark.parametrize("value", [0.5, float("nan"), [1, 2], {"a": 1}, b"bytes", np.float32(0.5),
                                   np.zeros(2)])
def test_non_scalar_fields_are_refused(log: AuditLog, value: object) -> None:
    before = _lines(log)
    with pytest.raises(StateError):
        log.append("answer", peer="FR", hits=value)
    assert _lines(log) == before


def _float_free(blob: bytes) -> list[dict]:
    floats: list[str] = []
    entries = [json.loads(line, parse_float=lambda s: floats.append(s) or 0.0) for line in blob.splitlines()]
    assert floats == []
    return entries


def _all_keys(obj: object) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | set().union(*(_all_keys(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_all_keys(v) for v in obj))
    return set()


def test_full_flow_logs_no_probe_and_no_scores(tmp_path: Path) -> None:
    nodes = build_network(str(tmp_path), ["DE", "FR"], n=300, seed=40)
    de, fr = nodes["DE"].state, nodes["FR"].state
    probe = synthetic.mate_probe(nodes["FR"].gallery, 17, seed=3)
    req, resp, ks = Requester(de), Responder(fr), KeyService(fr)

    q = req.query("FR", probe, "CASE-77", "audit leak check")
    answer = resp.answer(q)
    opened = req.open(answer)
    assert opened.hit and len(opened.candidates) == 1
    res = ks.resolve(req.follow_up(answer, opened.candidates[0]))
    assert res.reference == "FR-0000017"

    # What an attacker would search for: the probe as sent (normalised) and
    # as given, raw, hex, and base64 at every alignment, whole and in pieces.
    needles: list[bytes] = []
    for p in (np.asarray(probe, "<f4"), normalise_probe(probe, 512).astype("<f4")):
        raw = p.tobytes()
        needles += [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]
        for w in windows(raw, 16, 64):
            needles += leak_forms(w)

    for st in (de, fr):
        with open(st.audit.path, "rb") as fh:
            blob = fh.read()
        assert st.audit.verify() == blob.count(b"\n")
        assert [n for n in needles if n in blob] == []
        entries = _float_free(blob)
        keys = _all_keys(entries)
        assert [k for k in keys if re.search(r"score|probe|templ|embed|simil|distan|value", k, re.I)] == []

    events_de = [e["event"] for e in de.audit.entries()]
    events_fr = [e["event"] for e in fr.audit.entries()]
    assert events_de == ["init", "enroll", "trust", "query", "answer_received", "followup"]
    assert events_fr == ["init", "enroll", "trust", "answer", "resolve"]
    ans = fr.audit.entries()[3]["data"]
    assert (ans["peer"], ans["query_id"], ans["case"], ans["purpose"]) == ("DE", opened.query_id, "CASE-77",
                                                                          "audit leak check")
    assert (ans["hits"], ans["released"]) == (1, 1)
    assert fr.audit.entries()[4]["data"]["reference"] == "FR-0000017"
