"""One search between two states (pprm.cli.flow_cmds), through the CLI, sealed profile.

On the world of :mod:`tests.cli.worlds`: query, answer (once as a real
process of the installed script), open, follow-up, resolve and remove, every
outcome against plaintext truth; then every refused input of those verbs
(exit 1, one line, nothing changed, no output file).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pprm.cli.common as cli_common
from pprm import synthetic
from pprm.crypto import params as param_sets
from pprm.errors import ReplayError
from pprm.node.keyservice import KeyService
from tests.cli.worlds import (
    DIM,
    GALLERY,
    OPEN_KEYS,
    World,
    forged_card,
    make_query,
    pprm_script,
    refused,
    truth,
)
from tests.helpers import INSECURE_SEALED, ok, ok_json

RESOLVE_KEYS = {"format", "ok", "state", "peer", "profile", "query_id", "followup_id", "reference", "refused", "out"}


def test_end_to_end_query_answer_follow_up_resolve_remove(world: World, tmp_path: Path) -> None:
    de, fr = world.dirs["DE"], world.dirs["FR"]
    g = world.galleries["FR"]
    probe = synthetic.mate_probe(g, 7, seed=1)
    np.save(tmp_path / "p.npy", probe)
    expected = truth(g, probe)
    assert expected == ["FR-0000007"]

    q = ok_json("query", de, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "CASE-1",
                "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    assert q["peer"] == "FR" and q["profile"] == "sealed" and Path(q["out"]) == tmp_path / "q.msg"
    # The responder step runs as a real process of the installed script.
    proc = subprocess.run([pprm_script(), "answer", str(fr), str(tmp_path / "q.msg"), "--out",
                           str(tmp_path / "a.msg"), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # not a terminal: no progress bar
    answered = json.loads(proc.stdout)
    assert (answered["query_id"], answered["peer"], answered["profile"]) == (q["query_id"], "DE", "sealed")
    assert sorted(os.listdir(tmp_path)) == ["a.msg", "p.npy", "q.msg"]  # no temp file left

    opened = ok_json("open", de, tmp_path / "a.msg")
    assert set(opened) == OPEN_KEYS  # exactly these: nothing about scores
    assert opened["peer"] == "FR" and opened["query_id"] == q["query_id"] and opened["profile"] == "sealed"
    assert opened["hit"] is True and len(opened["candidates"]) == len(expected)
    assert "score" not in ok("open", de, tmp_path / "a.msg").out.lower()

    learned = []
    for i, tok in enumerate(opened["candidates"]):
        f = tmp_path / f"f{i}.msg"
        ok("follow-up", de, tmp_path / "a.msg", tok, "--out", f)
        res = ok_json("resolve", fr, f)
        assert set(res) == RESOLVE_KEYS and (res["peer"], res["profile"], res["refused"]) == ("DE", "sealed", None)
        learned.append(res["reference"])
    assert sorted(learned) == expected

    assert ok_json("remove", fr, "FR-0000007") == {"format": "pprm.remove/1", "ok": True, "state": "FR",
                                                   "removed": 1, "references": ["FR-0000007"], "total": GALLERY - 1}
    assert truth(g, probe, removed=frozenset({"FR-0000007"})) == []
    ok("query", de, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "CASE-1",
       "--purpose", "serious-crime", "--out", tmp_path / "q2.msg")
    ok("answer", fr, tmp_path / "q2.msg", "--out", tmp_path / "a2.msg")
    again = ok_json("open", de, tmp_path / "a2.msg")
    assert again["hit"] is False and again["candidates"] == []

    # The responder's log holds the release and the resolution, and verifies.
    entries = ok_json("audit", "show", fr)["entries"]
    events = [e["event"] for e in entries]
    assert events.count("answer") >= 2 and "resolve" in events and "remove" in events
    assert all(not {"score", "scores", "probe", "template"} & set(e["data"]) for e in entries)
    checkpoints = sum(e["event"] == "checkpoint" for e in entries)
    assert checkpoints >= 1
    counts = {"entries": len(entries), "checkpoints": checkpoints, "head": len(entries) - 1, "unsigned": 0}
    assert ok_json("audit", "verify", fr) == {"format": "pprm.audit.verify/1", "ok": True, "state": "FR", **counts,
                                              "logs": [{"log": "FR", "ok": True, **counts}]}


@pytest.mark.parametrize("kind", ["mate", "impostor"])
def test_probe_of_shape_1_by_d_and_impostors(world: World, tmp_path: Path, kind: str) -> None:
    g = world.galleries["NL"]
    probe = synthetic.mate_probe(g, 11, seed=2) if kind == "mate" else synthetic.impostor_probe(DIM, 5)
    np.save(tmp_path / "p.npy", probe[None, :])  # (1, d)
    expected = truth(g, probe)
    assert expected == (["NL-0000011"] if kind == "mate" else [])
    ok("query", world.dirs["FR"], "--probe", tmp_path / "p.npy", "--to", "NL", "--case", "C-2",
       "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    ok("answer", world.dirs["NL"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    opened = ok_json("open", world.dirs["FR"], tmp_path / "a.msg")
    learned = []
    for tok in opened["candidates"]:
        ok("follow-up", world.dirs["FR"], tmp_path / "a.msg", tok, "--out", tmp_path / "f.msg")
        learned.append(ok_json("resolve", world.dirs["NL"], tmp_path / "f.msg")["reference"])
    assert opened["hit"] is bool(expected) and sorted(learned) == expected


def test_query_refuses_wrong_probe_dimension_and_unknown_peer(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.ones(DIM // 2, np.float32))
    refused(world, tmp_path, "query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "FR",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "q.msg", says=f"dimension {DIM}")
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    refused(world, tmp_path, "query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "PL",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "q.msg", says="not in the roster")


def test_query_into_missing_directory_changes_nothing(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    # The output is prepared before the query is recorded in the outbox.
    refused(world, tmp_path, "query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "FR",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "no" / "q.msg", says="no such file")


def test_answer_refuses_missing_input(world: World, tmp_path: Path) -> None:
    refused(world, tmp_path, "answer", world.dirs["FR"], tmp_path / "absent.msg", "--out", tmp_path / "a.msg",
            says="absent.msg")


@pytest.mark.parametrize("where", ["fingerprint", "length", "header", "body", "signature"])
def test_answer_refuses_flipped_byte(world: World, tmp_path: Path, where: str) -> None:
    q = make_query(world, tmp_path, "DE", "FR")
    blob = bytearray(q.read_bytes())
    pos = {"fingerprint": 10, "length": 27, "header": 40, "body": len(blob) // 2, "signature": len(blob) - 3}[where]
    blob[pos] ^= 0x01
    q.write_bytes(bytes(blob))
    refused(world, tmp_path, "answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg")


def test_answer_refuses_message_for_another_recipient(world: World, tmp_path: Path) -> None:
    q = make_query(world, tmp_path, "DE", "FR")
    refused(world, tmp_path, "answer", world.dirs["NL"], q, "--out", tmp_path / "a.msg", says="addressed to FR")


def test_answer_refuses_replayed_query(world: World, tmp_path: Path) -> None:
    q = make_query(world, tmp_path, "DE", "FR")
    ok("answer", world.dirs["FR"], q, "--out", tmp_path / "a1.msg")
    refused(world, tmp_path, "answer", world.dirs["FR"], q, "--out", tmp_path / "a2.msg", says="already processed")


def test_answer_failing_after_the_write_leaves_no_file_and_no_state(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = make_query(world, tmp_path, "DE", "FR")

    def raced(*args: object, **kwargs: object) -> None:
        raise ReplayError("query was answered meanwhile")

    # The answer bytes have gone to the sink; recording the release then fails.
    monkeypatch.setattr(KeyService, "commit_release", raced)
    refused(world, tmp_path, "answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg", says="meanwhile")
    monkeypatch.undo()
    ok("answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg")  # nothing was recorded: it still works


def test_answer_whose_output_cannot_be_written_changes_nothing(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = make_query(world, tmp_path, "DE", "FR")

    def disk_full(self: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli_common.AtomicOutput, "write", disk_full)
    refused(world, tmp_path, "answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg", says="no space")
    monkeypatch.undo()
    ok("answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg")


def test_answer_refuses_untrusted_sender(world: World, tmp_path: Path) -> None:
    pl = tmp_path / "PL"
    ok("init", pl, "--name", "PL", "--params", INSECURE_SEALED, "--allow-insecure")
    ok("trust", pl, world.cards["FR"])  # PL trusts FR, FR does not trust PL
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    ok("query", pl, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C", "--purpose", "serious-crime",
       "--out", tmp_path / "q.msg")
    refused(world, tmp_path, "answer", world.dirs["FR"], tmp_path / "q.msg", "--out", tmp_path / "a.msg",
            says="not in the roster")


def test_answer_refuses_query_made_for_another_parameter_set(world: World, tmp_path: Path) -> None:
    # HU holds a card of FR announcing n4096 (say, a stale one); FR runs n1024.
    other = param_sets.get("pprm-sealed-n4096-v1")
    (tmp_path / "fr.card").write_bytes(forged_card(world, "FR", other.name, other.digest))
    hu = tmp_path / "HU"
    ok("init", hu, "--name", "HU", "--params", INSECURE_SEALED, "--allow-insecure")
    ok("trust", hu, tmp_path / "fr.card")
    ok("card", hu)
    (tmp_path / "hu.card").write_bytes((hu / "card.json").read_bytes())
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    ok("query", hu, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C", "--purpose", "serious-crime",
       "--out", tmp_path / "q.msg")
    fr_copy = tmp_path / "FR-copy"  # keep the shared FR's roster as it is
    shutil.copytree(world.dirs["FR"], fr_copy)
    ok("trust", fr_copy, tmp_path / "hu.card")
    refused(world, tmp_path, "answer", fr_copy, tmp_path / "q.msg", "--out", tmp_path / "a.msg",
            says="parameter set")


def test_open_and_follow_up_refuse_bad_answers(world: World, tmp_path: Path) -> None:
    q = make_query(world, tmp_path, "DE", "FR")
    ok("answer", world.dirs["FR"], q, "--out", tmp_path / "a.msg")
    blob = bytearray((tmp_path / "a.msg").read_bytes())
    blob[60] ^= 0x40
    (tmp_path / "bad.msg").write_bytes(bytes(blob))
    refused(world, tmp_path, "open", world.dirs["DE"], tmp_path / "bad.msg")
    refused(world, tmp_path, "open", world.dirs["NL"], tmp_path / "a.msg", says="addressed to DE")
    ok("open", world.dirs["DE"], tmp_path / "a.msg")
    refused(world, tmp_path, "follow-up", world.dirs["DE"], tmp_path / "a.msg", "A" * 40,
            "--out", tmp_path / "f.msg", says="token")


def test_resolve_refuses_replayed_follow_up(world: World, tmp_path: Path) -> None:
    g = world.galleries["NL"]
    probe = synthetic.mate_probe(g, 20, seed=3)
    assert truth(g, probe) == ["NL-0000020"]
    np.save(tmp_path / "p.npy", probe)
    ok("query", world.dirs["DE"], "--probe", tmp_path / "p.npy", "--to", "NL", "--case", "C",
       "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    ok("answer", world.dirs["NL"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    tok = ok_json("open", world.dirs["DE"], tmp_path / "a.msg")["candidates"][0]
    ok("follow-up", world.dirs["DE"], tmp_path / "a.msg", tok, "--out", tmp_path / "f.msg")
    assert ok_json("resolve", world.dirs["NL"], tmp_path / "f.msg")["reference"] == "NL-0000020"
    refused(world, tmp_path, "resolve", world.dirs["NL"], tmp_path / "f.msg", says="already processed")
