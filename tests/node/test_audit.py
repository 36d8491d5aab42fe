"""The audit log: a hash chain with signed checkpoints and a signed head, that names the first
damaged line (or the cut at the end), and carries no biometrics.

``log`` is an unsigned chain, as states wrote before signing existed (``State.init``
now signs from its first line); ``signed`` is a log signed with a
fixed test identity, 40 entries long, so that it holds the checkpoint where
signing starts (line 2) and the periodic ones (lines 16 and 32).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pprm import synthetic
from pprm.crypto.identity import Identity
from pprm.errors import AuthenticationError, StateError
from pprm.matching.templates import normalise_probe, normalise_templates
from pprm.node.audit import (
    _CHECKPOINT_TAG,
    _FORBIDDEN,
    _HEAD_TAG,
    CHECKPOINT,
    CRASH_WINDOW,
    GENESIS,
    RESUMED,
    AuditLog,
    AuditReport,
    _hash,
    _head_message,
    _signed_message,
)
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.protocol.canonical import encode
from tests.helpers import (
    INSECURE_BLIND,
    build_network,
    cli,
    fixed_identity,
    leak_forms,
    new_state,
    occurs_in,
    ok_json,
    snapshot,
    windows,
)

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


def _at(line: int) -> str:
    """How verify names a line of the log: its seq (as pprm audit show prints it) and its line, as a regex."""
    return rf"seq {line - 1} \(line {line}\)"


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
        with pytest.raises(StateError, match=rf"seq {line - 1} \(line {line}\) is damaged"):
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


def _float_free(blob: bytes) -> list[dict[str, Any]]:
    floats: list[str] = []

    def record(s: str) -> float:
        floats.append(s)
        return 0.0

    entries = [json.loads(line, parse_float=record) for line in blob.splitlines()]
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

    q = req.query("FR", probe, "CASE-77", "serious-crime")
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
                                                                          "serious-crime")
    assert (ans["hits"], ans["released"]) == (1, 1)
    assert fr.audit.entries()[4]["data"]["reference"] == "FR-0000017"


# -- signed logs: checkpoints and the signed head ----------------------------------------

N_SIGNED = 40
DE = fixed_identity("DE")
FORGER = fixed_identity("DE", "forger")  # the same state name, another key

Lines = list[bytes]
Head = dict[str, object] | None
Case = Callable[[Lines, dict[str, object]], tuple[Lines, Head, str]]


def signed_log(path: str, ident: Identity = DE) -> AuditLog:
    return AuditLog(path, signer=ident.sign, public=ident.public)


@pytest.fixture
def signed(tmp_path: Path) -> AuditLog:
    a = signed_log(str(tmp_path / "audit.log"))
    for i in range(N_SIGNED):
        a.append("note", peer="FR", i=i)
    return a


def _checkpoint_lines(lines: Lines) -> list[int]:
    return [n for n, line in enumerate(lines, start=1) if json.loads(line)["event"] == CHECKPOINT]


def _read_head(path: str) -> Head:
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        head = json.loads(fh.read())
    assert isinstance(head, dict)
    return head


def _write_head(path: str, head: Head) -> None:
    if head is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    with open(path, "wb") as fh:
        fh.write(encode(head) + b"\n")


def _edit(line: bytes) -> bytes:
    entry = json.loads(line)
    entry["time"] += 1
    return encode(entry) + b"\n"


def _rechain(lines: Lines, start: int, signer: Callable[[bytes], bytes] | None = None) -> Lines:
    """What a forger without the key can do: recompute every hash from line ``start`` on.

    Checkpoints keep their old signatures, or are re-signed with ``signer``
    (the forger's own key).
    """
    out = lines[:start - 1]
    prev = json.loads(out[-1])["hash"] if out else GENESIS
    for n, raw in enumerate(lines[start - 1:], start=start):
        entry = json.loads(raw)
        entry["seq"], entry["prev"] = n - 1, prev
        del entry["hash"]
        if entry["event"] == CHECKPOINT:
            entry["data"]["covers"] = n - 2
            if signer is not None:
                entry["data"]["sig"] = signer(_signed_message(_CHECKPOINT_TAG, "DE", n - 2, prev)).hex()
        entry["hash"] = prev = _hash(entry)
        out.append(encode(entry) + b"\n")
    return out


def _forged_entry(after: bytes) -> bytes:
    last = json.loads(after)
    entry = {"seq": last["seq"] + 1, "time": last["time"], "event": "note", "data": {"peer": "XX"},
             "prev": last["hash"]}
    entry["hash"] = _hash(entry)
    return encode(entry) + b"\n"


# Each case tampers with (log lines, head) as someone without the signing key
# could, and says what verify must report. Line numbers follow from the log.

def _edit_a_line(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    lines[4] = _edit(lines[4])
    return lines, head, r"chain breaks at seq 4 \(line 5\)$"


def _edit_and_rechain(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    lines[4] = _edit(lines[4])
    first = next(c for c in _checkpoint_lines(lines) if c > 5)
    return _rechain(lines, 5), head, rf"checkpoint at {_at(first)} has a bad signature$"


def _edit_the_tail_and_rechain(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    n = len(lines)
    last = _checkpoint_lines(lines)[-1]
    lines[n - 2] = _edit(lines[n - 2])
    return (_rechain(lines, n - 1), head,
            rf"entry {_at(n)} does not match the signed head: the log was rewritten after {_at(last)}$")


def _delete_a_middle_line(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    del lines[9]
    return lines, head, r"chain breaks at seq 9 \(line 10\)$"


def _delete_the_last_line(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    n = len(lines)
    return lines[:-1], head, rf"log ends at {_at(n - 1)} but the signed head is at {_at(n)}: entries deleted$"


def _delete_the_tail(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    n = len(lines)
    return lines[:20], head, rf"log ends at {_at(20)} but the signed head is at {_at(n)}: entries deleted$"


def _delete_back_to_a_checkpoint(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    n, last = len(lines), _checkpoint_lines(lines)[-1]
    return lines[:last], head, rf"log ends at {_at(last)} but the signed head is at {_at(n)}: entries deleted$"


def _delete_everything(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    return [], head, rf"log is empty but the signed head is at {_at(len(lines))}: entries deleted$"


def _reorder(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    lines[6], lines[7] = lines[7], lines[6]
    return lines, head, r"chain breaks at seq 6 \(line 7\)$"


def _reorder_and_rechain(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    lines[6], lines[7] = lines[7], lines[6]
    first = next(c for c in _checkpoint_lines(lines) if c > 7)
    return _rechain(lines, 7), head, rf"checkpoint at {_at(first)} has a bad signature$"


def _insert_a_line(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    lines.insert(8, _forged_entry(lines[7]))  # chains to line 8; line 10 then does not
    return lines, head, r"chain breaks at seq 9 \(line 10\)$"


def _insert_and_rechain(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    lines.insert(8, _forged_entry(lines[7]))
    first = next(c for c in _checkpoint_lines(lines) if c > 9)
    return _rechain(lines, 10), head, rf"checkpoint at {_at(first)} has a bad signature$"


def _append_a_line(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    # More lines than an interrupted append can leave (CRASH_WINDOW) past the head.
    n = len(lines)
    for _ in range(CRASH_WINDOW + 1):
        lines = [*lines, _forged_entry(lines[-1])]
    return (lines, head,
            rf"continues past the signed head at {_at(n)}: seq {n}-{n + CRASH_WINDOW} "
            rf"\(lines {n + 1}-{n + CRASH_WINDOW + 1}\) are unsigned$")


def _forge_a_checkpoint(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    # Edit, re-chain, and sign the checkpoints again with another key.
    lines[4] = _edit(lines[4])
    first = next(c for c in _checkpoint_lines(lines) if c > 5)
    return _rechain(lines, 5, FORGER.sign), head, rf"checkpoint at {_at(first)} has a bad signature$"


def _forge_the_head(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    cut = lines[:20]
    last = json.loads(cut[-1])
    sig = FORGER.sign(_signed_message(_HEAD_TAG, "DE", last["seq"], last["hash"])).hex()
    return cut, {**head, "seq": last["seq"], "hash": last["hash"], "sig": sig}, r"head audit.head has a bad signature$"


def _checkpoint_as_head(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    # A checkpoint signs the line before it; its signature must not pass for a head there.
    cp = _checkpoint_lines(lines)[-1]
    cut = lines[:cp - 1]
    last, sig = json.loads(cut[-1]), json.loads(lines[cp - 1])["data"]["sig"]
    return cut, {**head, "seq": last["seq"], "hash": last["hash"], "sig": sig}, r"head audit.head has a bad signature$"


def _delete_the_head(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    last = _checkpoint_lines(lines)[-1]
    return lines, None, rf"signed head audit.head is missing: entries after {_at(last)} may have been deleted$"


def _delete_the_head_and_the_tail(lines: Lines, head: dict[str, object]) -> tuple[Lines, Head, str]:
    last = _checkpoint_lines(lines)[-1]
    return (lines[:last + 2], None,
            rf"signed head audit.head is missing: entries after {_at(last)} may have been deleted$")


CASES: dict[str, Case] = {
    "edit": _edit_a_line,
    "edit+rechain": _edit_and_rechain,
    "edit-tail+rechain": _edit_the_tail_and_rechain,
    "delete-middle": _delete_a_middle_line,
    "delete-last": _delete_the_last_line,
    "delete-tail": _delete_the_tail,
    "delete-to-checkpoint": _delete_back_to_a_checkpoint,
    "delete-all": _delete_everything,
    "reorder": _reorder,
    "reorder+rechain": _reorder_and_rechain,
    "insert": _insert_a_line,
    "insert+rechain": _insert_and_rechain,
    "append": _append_a_line,
    "forged-checkpoint": _forge_a_checkpoint,
    "forged-head": _forge_the_head,
    "checkpoint-as-head": _checkpoint_as_head,
    "head-deleted": _delete_the_head,
    "head-and-tail-deleted": _delete_the_head_and_the_tail,
}
# The log no longer ends at its signed head: appends must refuse these.
TAIL_CASES = ["edit-tail+rechain", "delete-last", "delete-tail", "delete-to-checkpoint", "delete-all",
              "append", "forged-head", "checkpoint-as-head", "head-deleted", "head-and-tail-deleted"]


def _tamper(log_path: str, head_path: str, case: str) -> str:
    with open(log_path, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    head = _read_head(head_path)
    assert head is not None
    lines, new_head, says = CASES[case](lines, head)
    with open(log_path, "wb") as fh:
        fh.write(b"".join(lines))
    _write_head(head_path, new_head)
    return says


def test_signed_log_verifies(signed: AuditLog) -> None:
    lines = _lines(signed)
    n = len(lines)
    assert _checkpoint_lines(lines) == [2, 16, 32]  # where signing starts, then every 16th line
    assert signed.check() == AuditReport(n, 3, n - 1)
    assert signed.verify() == n == N_SIGNED + 3
    # entries() lists what happened; checkpoints only on request.
    assert [e["data"]["i"] for e in signed.entries()] == list(range(N_SIGNED))
    every = signed.entries(checkpoints=True)
    assert [e["seq"] for e in every] == list(range(n))
    for line in (2, 16, 32):
        cp = every[line - 1]
        assert cp["event"] == CHECKPOINT and set(cp["data"]) == {"state", "covers", "sig"}
        assert (cp["data"]["state"], cp["data"]["covers"]) == ("DE", line - 2)
        DE.public.verify(_signed_message(_CHECKPOINT_TAG, "DE", line - 2, every[line - 2]["hash"]),
                         bytes.fromhex(cp["data"]["sig"]))


def test_signed_head_names_the_last_line(signed: AuditLog) -> None:
    assert signed.head_path == os.path.join(os.path.dirname(signed.path), "audit.head")
    assert stat.S_IMODE(os.stat(signed.head_path).st_mode) == 0o600
    with open(signed.head_path, "rb") as fh:
        blob = fh.read()
    head = json.loads(blob)
    assert blob == encode(head) + b"\n"
    last = signed.entries(checkpoints=True)[-1]
    assert (head["state"], head["seq"], head["hash"]) == ("DE", last["seq"], last["hash"])
    # The head signs the policy digest too (none recorded in this log); not under the v1 message.
    assert head["policy"] is None
    DE.public.verify(_head_message("DE", head["seq"], head["hash"], None), bytes.fromhex(head["sig"]))
    with pytest.raises(AuthenticationError):
        DE.public.verify(_signed_message(_HEAD_TAG, "DE", head["seq"], head["hash"]), bytes.fromhex(head["sig"]))
    signed.append("more")
    assert _read_head(signed.head_path)["seq"] == last["seq"] + 1  # type: ignore[index]
    assert signed.verify() == last["seq"] + 2


@pytest.mark.parametrize("case", list(CASES))
def test_tampering_is_detected(signed: AuditLog, case: str) -> None:
    says = _tamper(signed.path, signed.head_path, case)
    with pytest.raises(StateError, match=says) as err:
        signed.verify()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("extra", range(1, CRASH_WINDOW + 1))
def test_an_interrupted_append_is_reported_then_flagged_in_the_log(signed: AuditLog, extra: int) -> None:
    # A process killed after writing its line(s) but before re-signing the
    # head leaves a short chain-valid tail: the log still verifies, says how
    # many lines are unsigned, and the next append names them in a
    # "resumed" entry before signing over them.
    with open(signed.path, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    n = len(lines)
    for _ in range(extra):
        lines.append(_forged_entry(lines[-1]))
    with open(signed.path, "wb") as fh:
        fh.write(b"".join(lines))
    rep = signed.check()
    assert (rep.entries, rep.head, rep.unsigned) == (n + extra, n - 1, extra)
    signed.append("answer", peer="FR")
    every = signed.entries(checkpoints=True)
    resumed = next(e for e in every if e["event"] == RESUMED)
    assert resumed["data"] == {"unsigned_from": n + 1, "unsigned_to": n + extra}
    assert signed.check().unsigned == 0 and every[-1]["event"] in ("answer", CHECKPOINT)


@pytest.mark.parametrize("case", TAIL_CASES)
def test_append_refuses_a_log_that_does_not_end_at_its_signed_head(signed: AuditLog, case: str) -> None:
    # Otherwise the next signature would cover the cut (or the forged tail).
    _tamper(signed.path, signed.head_path, case)
    before = snapshot(os.path.dirname(signed.path))
    with pytest.raises(StateError, match=r"signed head|damaged"):
        signed.append("answer", peer="FR")
    assert snapshot(os.path.dirname(signed.path)) == before


def test_a_damaged_head_is_reported(signed: AuditLog) -> None:
    with open(signed.head_path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(StateError, match=r"signed head audit.head is damaged$"):
        signed.verify()


def test_another_key_does_not_verify(signed: AuditLog) -> None:
    with pytest.raises(StateError, match=r"head audit\.head has a bad signature"):
        signed_log(signed.path, FORGER).verify()
    with pytest.raises(StateError, match=r"head audit\.head is for state 'DE'"):
        signed_log(signed.path, fixed_identity("FR")).verify()


def test_a_signed_log_needs_the_key(signed: AuditLog, tmp_path: Path) -> None:
    bare = AuditLog(signed.path)
    before = snapshot(str(tmp_path))
    with pytest.raises(StateError, match="needs the state's signing key"):
        bare.append("note")
    with pytest.raises(StateError, match="needs the state's key"):
        bare.verify()
    os.unlink(signed.head_path)
    with pytest.raises(StateError, match=r"checkpoint at seq 1 \(line 2\) cannot be checked without the state's key"):
        bare.verify()
    assert snapshot(str(tmp_path)) == {k: v for k, v in before.items() if k != "audit.head"}


def test_checkpoint_is_a_reserved_event(signed: AuditLog) -> None:
    before = _lines(signed)
    with pytest.raises(StateError, match="reserved"):
        signed.append(CHECKPOINT, state="DE", covers=1, sig="00" * 64)
    assert _lines(signed) == before


def test_unsigned_log_verifies_and_the_first_signed_append_starts_signing(log: AuditLog) -> None:
    # A log from before signing: no checkpoint, no head. It verifies...
    assert log.check() == AuditReport(N_LINES, 0, None)
    assert not os.path.exists(log.head_path)
    # ...and the first signed append signs it: a checkpoint right after the
    # entry, and the head.
    s = signed_log(log.path)
    s.append("trust", peer="PL")
    assert s.check() == AuditReport(N_LINES + 2, 1, N_LINES + 1)
    assert _checkpoint_lines(_lines(s)) == [N_LINES + 2]
    for _ in range(16):
        s.append("note")
    assert _checkpoint_lines(_lines(s)) == [N_LINES + 2, 16]
    # From now on, a cut at the end is detected.
    lines = _lines(s)
    _write(s, lines[:-1])
    with pytest.raises(StateError, match=rf"ends at {_at(len(lines) - 1)} but the signed head is at seq"):
        s.verify()


def test_checkpoints_still_catch_a_rewrite_without_the_head(signed: AuditLog) -> None:
    # With the head lost, the checkpoints still prove every line up to the last one.
    os.unlink(signed.head_path)
    lines = _lines(signed)
    _write(signed, _rechain([*lines[:10], _edit(lines[10]), *lines[11:]], 11))
    with pytest.raises(StateError, match=r"checkpoint at seq 15 \(line 16\) has a bad signature"):
        signed.verify()


def test_a_kept_old_head_is_the_remaining_limit(signed: AuditLog) -> None:
    # Someone who saved audit.head earlier can cut the log back to it; only a
    # head seq recorded elsewhere (``pprm audit verify --json``) shows that.
    with open(signed.head_path, "rb") as fh:
        old_head = fh.read()
    old = _lines(signed)
    for i in range(5):
        signed.append("note", i=i)
    _write(signed, old)
    with open(signed.head_path, "wb") as fh:
        fh.write(old_head)
    assert signed.check().head == len(old) - 1


# -- through the CLI ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state whose log holds init (signed from the start, as State.init writes it) and 40 signed notes."""
    root = tmp_path_factory.mktemp("audit-cli")
    st = new_state(root / "DE", "DE")
    with st.lock():
        for i in range(N_SIGNED):
            st.audit.append("note", peer="FR", i=i)
    return root / "DE"


def _verified(entries: int, checkpoints: int, head: int | None) -> dict[str, object]:
    """What ``pprm audit verify --json`` prints for DE's log alone when it verifies."""
    counts = {"entries": entries, "checkpoints": checkpoints, "head": head, "unsigned": 0}
    return {"format": "pprm.audit.verify/1", "ok": True, "state": "DE", **counts,
            "logs": [{"log": "DE", "ok": True, **counts}]}


def test_cli_verify_and_show(cli_state: Path) -> None:
    n = 1 + N_SIGNED + 3
    assert ok_json("audit", "verify", cli_state) == _verified(n, 3, n - 1)
    text = cli("audit", "verify", cli_state)
    assert text.code == 0
    assert text.out == (f"audit log of DE verifies: {n} entries (seq 0-{n - 1}), 3 signed checkpoint(s), signed head "
                        f"at seq {n - 1}\n")
    shown = ok_json("audit", "show", cli_state)
    assert shown["format"] == "pprm.audit.show/1" and shown["ok"] is True and shown["state"] == "DE"
    logged = [json.loads(line) for line in (cli_state / "audit.log").read_bytes().splitlines()]
    # The log's own "time" (epoch seconds) is "epoch"; "time" is its ISO 8601 UTC form.
    assert [{**e, "time": e["epoch"]} for e in shown["entries"]] == [{**e, "epoch": e["time"]} for e in logged]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["time"]) for e in shown["entries"])
    shown = shown["entries"]
    assert [e["seq"] for e in shown] == list(range(n))
    assert [n for n, e in enumerate(shown, start=1) if e["event"] == CHECKPOINT] == [2, 16, 32]
    assert shown[0]["event"] == "init" and [e["data"]["i"] for e in shown if e["event"] == "note"] == list(
        range(N_SIGNED))
    plain = cli("audit", "show", cli_state).out.splitlines()
    assert len(plain) == n and "checkpoint" in plain[1] and "covers=0" in plain[1]


def test_cli_verify_of_a_state_before_signing(tmp_path: Path) -> None:
    # Older states have only unsigned lines, starting with an init line that records no policy.
    st = new_state(tmp_path / "DE", "DE")
    os.unlink(st.audit.head_path)
    os.unlink(st.audit.path)
    AuditLog(st.audit.path).append("init", state="DE", params="x", threshold_milli=400, k=10, dim=512)
    assert ok_json("audit", "verify", st.dir) == _verified(1, 0, None)
    assert "not signed yet" in cli("audit", "verify", st.dir).out
    old = AuditLog(st.audit.path)
    for i in range(20):
        old.append("note", i=i)
    assert ok_json("audit", "verify", st.dir) == _verified(21, 0, None)
    with st.lock():
        st.audit.append("trust", peer="FR")
    assert ok_json("audit", "verify", st.dir) == _verified(23, 1, 22)


@pytest.mark.parametrize("case", list(CASES))
def test_cli_verify_detects_tampering(cli_state: Path, tmp_path: Path, case: str) -> None:
    copy = tmp_path / "DE"
    shutil.copytree(cli_state, copy)
    says = _tamper(str(copy / "audit.log"), str(copy / "audit.head"), case)
    before = snapshot(str(tmp_path))
    r = cli("audit", "verify", copy)
    assert (r.code, r.out) == (1, "")
    assert r.err.startswith("pprm: error: audit log") and r.err.count("\n") == 1, r.err
    assert re.search(says, r.err.rstrip("\n")), r.err
    assert snapshot(str(tmp_path)) == before


# -- no biometrics, byte for byte --------------------------------------------------------


def test_logs_of_a_sealed_and_a_blind_flow_hold_no_template_or_probe_bytes(tmp_path: Path) -> None:
    a = new_state(tmp_path / "AA", "AA", blind_params=INSECURE_BLIND)
    b = new_state(tmp_path / "BB", "BB", blind_params=INSECURE_BLIND)
    a.trust(b.card_bytes)
    b.trust(a.card_bytes)
    ga = synthetic.make_gallery(20, dim=512, seed=71, prefix="AA")
    gb = synthetic.make_gallery(60, dim=512, seed=72, prefix="BB")
    KeyService(a).enroll(ga.templates, ga.references)
    KeyService(b).enroll(gb.templates, gb.references)

    # Sealed: query, answer, open, follow-up, resolve.
    sealed_probe = synthetic.mate_probe(gb, 7, seed=1)
    q = Requester(a).query("BB", sealed_probe, "CASE-S1", "serious-crime")
    answer = Responder(b).answer(q)
    opened = Requester(a).open(answer)
    assert opened.hit
    fu = Requester(a).follow_up(answer, opened.candidates[0])
    assert KeyService(b).resolve(fu).reference == gb.references[7]

    # Blind: query with a new key, the responder accepts it, answers; open.
    blind_probe = synthetic.mate_probe(gb, 11, seed=2)
    ann, bq = Requester(a).blind_query("BB", blind_probe, "CASE-B1", "serious-crime")
    assert ann is not None
    Responder(b).accept_keys(ann)
    opened_blind = Requester(a).open(Responder(b).answer(bq))
    assert opened_blind.hit

    # Every float form an attacker would look for: templates and probes as
    # given (float32), widened (float64) and as normalised for matching; 16-byte
    # windows of each, raw, hex and base64 at every alignment.
    # (Gallery rows every 64 bytes, probes every 16.)
    needles: list[bytes] = []
    arrays = [(t, 64) for g in (ga, gb) for t in (g.templates, normalise_templates(g.templates, 512))]
    for p in (sealed_probe, blind_probe):
        arrays += [(np.asarray(p)[None, :], 16), (normalise_probe(p, 512)[None, :], 16)]
    for arr, stride in arrays:
        for dtype in ("<f4", "<f8"):
            for row in np.asarray(arr, dtype):
                raw = row.tobytes()
                needles.append(raw)
                for w in windows(raw, 16, stride):
                    needles += leak_forms(w)
    assert len(needles) > 10_000

    files: dict[str, bytes] = {}
    for st in (a, b):
        for name in ("audit.log", "audit.head"):
            with open(st.path(name), "rb") as fh:
                files[f"{st.config.name}/{name}"] = fh.read()
        report = st.audit.check()
        assert report.checkpoints >= 1 and report.head == report.entries - 1
    assert occurs_in(needles, files) == []
    for name, blob in files.items():
        assert re.search(rb"score|probe|templ|embed|simil|distan|value|vector", blob, re.I) is None, name
        entries = _float_free(blob)
        keys = _all_keys(entries)
        assert [k for k in keys if re.search(r"score|probe|templ|embed|simil|distan|value", k, re.I)] == []
    events = {st.config.name: [e["event"] for e in st.audit.entries()] for st in (a, b)}
    assert {"query", "answer_received", "followup"} <= set(events["AA"])
    assert {"enroll", "answer", "resolve", "keys"} <= set(events["BB"])
