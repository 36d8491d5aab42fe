"""One search between two states (pprm.cli.flow_cmds), through the CLI, blind profile.

Two states (AA asks, BB answers) are created with the test-only sets through
``pprm init --params INSECURE-sealed-n1024 --blind-params
INSECURE-blind-n1024-v2 --allow-insecure``, exchange cards and enrol through
the CLI itself (``main(argv)`` in-process). A blind query whose key is new
writes one file, a delivery holding the query and the key's announcement
(:mod:`pprm.protocol.delivery`); ``answer`` reads both from it. The two-file
flow of older versions still works: ``query --keys-out FILE`` writes the
bare query and a separate announcement, which ``answer --keys FILE`` accepts.

As in tests/cli/test_flow_cmds.py, every refused command must exit 1 with exactly one
``pprm: error:`` line on stderr, nothing on stdout, and leave every state
directory and the message directory unchanged, with no output file created.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pprm.cli.common as cli_common
from pprm import synthetic
from pprm.matching.templates import normalise_probe, normalise_templates
from pprm.node.requester import Requester
from pprm.node.state import State
from pprm.protocol.blind_messages import make_handle, parse_handle
from pprm.protocol.delivery import unpack_delivery
from tests.cli.worlds import OPEN_KEYS, refused
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED, cli, ok, ok_json

DIM = 512
TAU = 0.4
GALLERY = 100
NAMES = ("AA", "BB")



@dataclass
class World:
    root: Path
    dirs: dict[str, Path]
    gallery: synthetic.SyntheticGallery


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """AA and BB initialised with the insecure sets, mutually trusted, BB enrolled: all via the CLI."""
    root = tmp_path_factory.mktemp("cli-blind")
    dirs = {n: root / n for n in NAMES}
    for n, d in dirs.items():
        info = ok_json("init", d, "--name", n, "--params", INSECURE_SEALED, "--blind-params", INSECURE_BLIND,
                       "--allow-insecure")
        assert info["params"] == INSECURE_SEALED and info["blind_params"] == INSECURE_BLIND
    for a in NAMES:
        for b in NAMES:
            if a != b:
                (root / f"{b}.card").write_text(ok("card", dirs[b]).out)
                assert ok_json("trust", dirs[a], root / f"{b}.card")["peer"] == b
    gallery = synthetic.make_gallery(GALLERY, dim=DIM, seed=31, prefix="BB")
    np.save(root / "templates.npy", gallery.templates)
    (root / "refs.txt").write_text("\n".join(gallery.references) + "\n", encoding="utf-8")
    assert ok_json("enroll", dirs["BB"], "--templates", root / "templates.npy", "--refs", root / "refs.txt") == {
        "format": "pprm.enroll/1", "ok": True, "state": "BB", "enrolled": GALLERY, "total": GALLERY}
    return World(root, dirs, gallery)


def truth(gallery: synthetic.SyntheticGallery, probe: np.ndarray) -> list[str]:
    g = normalise_templates(gallery.templates, DIM).astype(np.float64)
    s = g @ normalise_probe(probe, DIM).astype(np.float64)
    assert np.min(np.abs(s - TAU)) >= 2e-3, "test data has a score inside the decision margin"
    return sorted(r for r, v in zip(gallery.references, s, strict=True) if v >= TAU)


def save_probe(world: World, where: Path, index: int) -> Path:
    probe = synthetic.mate_probe(world.gallery, index, seed=5)
    assert truth(world.gallery, probe) == [world.gallery.references[index]]
    np.save(where / "p.npy", probe)
    return where / "p.npy"


def blind_query(world: World, where: Path, probe: Path, case: str, name: str, *extra: object) -> dict[str, Any]:
    return ok_json("query", world.dirs["AA"], "--probe", probe, "--to", "BB", "--case", case,
                   "--purpose", "serious-crime", "--out", where / name, "--profile", "blind", *extra)


def answer(world: World, where: Path, query: str, *extra: object) -> tuple[Path]:
    """BB answers ``where/query`` into ``where/a-QUERY``; returns the answer's path (for ``open``)."""
    out = where / f"a-{query}"
    ok("answer", world.dirs["BB"], where / query, "--out", out, *extra)
    return (out,)


def test_blind_query_answer_open_follow_up_resolve(world: World, tmp_path: Path) -> None:
    probe = save_probe(world, tmp_path, 7)
    q = blind_query(world, tmp_path, probe, "CASE-B1", "q.msg")
    assert q["peer"] == "BB" and q["profile"] == "blind" and q["announced"] is True and q["keys"] is None
    assert Path(q["out"]) == tmp_path / "q.msg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy", "q.msg"]  # one file to deliver
    query, (announcement,) = unpack_delivery((tmp_path / "q.msg").read_bytes())
    assert query.startswith(b"PPRM") and announcement.startswith(b"PPRM")

    a = ok_json("answer", world.dirs["BB"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    assert a["peer"] == "AA" and a["profile"] == "blind" and a["query_id"] == q["query_id"]
    assert (tmp_path / "a.msg").exists()
    assert a["announcements"] == 1

    opened = ok_json("open", world.dirs["AA"], tmp_path / "a.msg")
    assert set(opened) == OPEN_KEYS  # nothing about values or scores
    assert opened["peer"] == "BB" and opened["profile"] == "blind" and opened["query_id"] == q["query_id"]
    assert opened["hit"] is True
    (handle,) = opened["candidates"]  # the plaintext truth is one mate (save_probe checks it)
    parse_handle(handle)

    ok("follow-up", world.dirs["AA"], tmp_path / "a.msg", handle, "--out", tmp_path / "f.msg")
    res = ok("resolve", world.dirs["BB"], tmp_path / "f.msg")
    assert res.out.split()[0] == "BB-0000007"
    assert "released to AA" in res.out and q["query_id"] in res.out
    assert ok_json("audit", "verify", world.dirs["BB"])["ok"] is True


def test_second_query_for_a_case_reuses_the_key(world: World, tmp_path: Path) -> None:
    probe = save_probe(world, tmp_path, 8)
    first = blind_query(world, tmp_path, probe, "CASE-B2", "q1.msg")
    assert first["announced"] is True and first["keys"] is None
    second = blind_query(world, tmp_path, probe, "CASE-B2", "q2.msg")
    assert second["announced"] is False and second["keys"] is None and second["key_id"] == first["key_id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy", "q1.msg", "q2.msg"]
    # Only what carries an announcement is a delivery; the second query is the bare signed message.
    assert not (tmp_path / "q1.msg").read_bytes().startswith(b"PPRM")
    assert (tmp_path / "q2.msg").read_bytes().startswith(b"PPRM")
    # BB learns the key once, then answers both queries.
    assert ok_json("answer", world.dirs["BB"], tmp_path / "q1.msg", "--out", tmp_path / "a1.msg")["announcements"] == 1
    assert ok_json("answer", world.dirs["BB"], tmp_path / "q2.msg", "--out", tmp_path / "a2.msg")["announcements"] == 0
    for name in ("a1.msg", "a2.msg"):
        assert ok_json("open", world.dirs["AA"], tmp_path / name)["hit"] is True


def test_a_sealed_query_file_stays_the_bare_message(world: World, tmp_path: Path) -> None:
    probe = save_probe(world, tmp_path, 15)
    q = ok_json("query", world.dirs["AA"], "--probe", probe, "--to", "BB", "--case", "CASE-S1", "--purpose",
                "serious-crime", "--out", tmp_path / "q.msg", "--keys-out", tmp_path / "q.keys")
    assert set(q) == {"format", "ok", "state", "peer", "profile", "query_id", "out", "key_id", "announced", "keys"}
    assert (q["profile"], q["key_id"], q["announced"], q["keys"]) == ("sealed", None, False, None)
    assert (tmp_path / "q.msg").read_bytes().startswith(b"PPRM") and not (tmp_path / "q.keys").exists()
    assert ok_json("open", world.dirs["AA"], *answer(world, tmp_path, "q.msg"))["hit"] is True


def test_keys_out_writes_the_two_files_of_older_versions(world: World, tmp_path: Path) -> None:
    probe = save_probe(world, tmp_path, 9)
    q = blind_query(world, tmp_path, probe, "CASE-B3", "q.msg", "--keys-out", tmp_path / "key-announcement")
    assert Path(q["keys"]) == tmp_path / "key-announcement" and q["announced"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key-announcement", "p.npy", "q.msg"]
    assert (tmp_path / "q.msg").read_bytes().startswith(b"PPRM")  # the bare query, as older versions wrote it
    assert ok("query", world.dirs["AA"], "--probe", probe, "--to", "BB", "--case", "CASE-B3b", "--purpose",
              "serious-crime", "--out", tmp_path / "r.msg", "--profile", "blind", "--keys-out",
              tmp_path / "r.keys").out.endswith("--keys " + str(tmp_path / "r.keys") + ")\n")
    # The old two-file flow is answered as before.
    a = ok_json("answer", world.dirs["BB"], tmp_path / "q.msg", "--keys", tmp_path / "key-announcement",
                "--out", tmp_path / "a.msg")
    assert a["announcements"] == 1
    assert ok_json("open", world.dirs["AA"], tmp_path / "a.msg")["hit"] is True


def test_the_same_announcement_in_the_file_and_in_keys_counts_once(world: World, tmp_path: Path) -> None:
    probe = save_probe(world, tmp_path, 16)
    blind_query(world, tmp_path, probe, "CASE-B9", "q.msg")
    _, (announcement,) = unpack_delivery((tmp_path / "q.msg").read_bytes())
    (tmp_path / "q.keys").write_bytes(announcement)
    (out,) = answer(world, tmp_path, "q.msg", "--keys", tmp_path / "q.keys")
    assert ok_json("open", world.dirs["AA"], out)["hit"] is True


def test_answer_without_the_announcement_of_a_new_key_fails_cleanly(world: World, tmp_path: Path) -> None:
    probe = save_probe(world, tmp_path, 10)
    blind_query(world, tmp_path, probe, "CASE-B4", "q.msg", "--keys-out", tmp_path / "q.msg.keys")
    err = refused(world, tmp_path, "answer", world.dirs["BB"], tmp_path / "q.msg", "--out", tmp_path / "a.msg",
                  says="unknown blind key id")
    # The error says what each side can do next.
    assert "--keys FILE" in err and "pprm keys abandon" in err
    assert not (tmp_path / "a.msg").exists()
    # Nothing was recorded: with the announcement, the same query is answered.
    ok("answer", world.dirs["BB"], tmp_path / "q.msg", "--keys", tmp_path / "q.msg.keys", "--out", tmp_path / "a.msg")


@pytest.mark.parametrize("where", ["file", "keys"])
def test_answer_refuses_a_tampered_announcement(world: World, tmp_path: Path, where: str) -> None:
    probe = save_probe(world, tmp_path, 11)
    if where == "keys":
        blind_query(world, tmp_path, probe, "CASE-B5", "q.msg", "--keys-out", tmp_path / "q.msg.keys")
        keys = bytearray((tmp_path / "q.msg.keys").read_bytes())
        keys[len(keys) // 2] ^= 0x04
        (tmp_path / "bad.keys").write_bytes(bytes(keys))
        refused(world, tmp_path, "answer", world.dirs["BB"], tmp_path / "q.msg", "--keys", tmp_path / "bad.keys",
                "--out", tmp_path / "a.msg", says="does not verify")
        return
    blind_query(world, tmp_path, probe, "CASE-B5f", "q.msg")
    blob = bytearray((tmp_path / "q.msg").read_bytes())
    _, (announcement,) = unpack_delivery(bytes(blob))
    blob[len(blob) - len(announcement) // 2] ^= 0x04  # inside the announcement, the last part
    (tmp_path / "bad.msg").write_bytes(bytes(blob))
    refused(world, tmp_path, "answer", world.dirs["BB"], tmp_path / "bad.msg", "--out", tmp_path / "a.msg",
            says="does not verify")
    (tmp_path / "junk.msg").write_bytes(b"not a query at all")
    refused(world, tmp_path, "answer", world.dirs["BB"], tmp_path / "junk.msg", "--out", tmp_path / "a.msg",
            says="neither a signed message nor a delivery")


def test_answer_into_a_missing_directory_changes_nothing(world: World, tmp_path: Path) -> None:
    # The announcement must not be accepted when the answer cannot be written:
    # otherwise the retry below, with the same announcement, is refused as a replay.
    probe = save_probe(world, tmp_path, 12)
    blind_query(world, tmp_path, probe, "CASE-B6", "q.msg")
    refused(world, tmp_path, "answer", world.dirs["BB"], tmp_path / "q.msg",
            "--out", tmp_path / "missing" / "a.msg", says="no such file")
    ok("answer", world.dirs["BB"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")


@pytest.mark.parametrize("failing", [".keys", "q.msg"])
def test_blind_query_whose_files_cannot_be_written_leaves_no_file(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    probe = save_probe(world, tmp_path, 13)
    write = cli_common.AtomicOutput.write

    def disk_full(self: cli_common.AtomicOutput, data: bytes) -> None:
        if self.path.endswith(failing):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, data)

    monkeypatch.setattr(cli_common.AtomicOutput, "write", disk_full)
    refused(world, tmp_path, "query", world.dirs["AA"], "--probe", probe, "--to", "BB", "--case", "CASE-B7",
            "--purpose", "serious-crime", "--out", tmp_path / "q.msg", "--profile", "blind",
            "--keys-out", tmp_path / "q.msg.keys", says="no space")
    if failing == "q.msg":  # the one-file flow too
        refused(world, tmp_path, "query", world.dirs["AA"], "--probe", probe, "--to", "BB", "--case", "CASE-B7",
                "--purpose", "serious-crime", "--out", tmp_path / "q.msg", "--profile", "blind", says="no space")


def test_blind_query_writes_nothing_when_refused(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.ones(DIM // 2, np.float32))
    refused(world, tmp_path, "query", world.dirs["AA"], "--probe", tmp_path / "p.npy", "--to", "BB",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "q.msg", "--profile", "blind",
            says=f"dimension {DIM}")
    np.save(tmp_path / "p.npy", np.ones(DIM, np.float32))
    refused(world, tmp_path, "query", world.dirs["AA"], "--probe", tmp_path / "p.npy", "--to", "PL",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "q.msg", "--profile", "blind",
            says="not in the roster")


def test_init_refuses_an_insecure_blind_set_without_permission(world: World, tmp_path: Path) -> None:
    refused(world, tmp_path, "init", tmp_path / "XX", "--name", "XX", "--params", "pprm-sealed-n4096-v1",
            "--blind-params", INSECURE_BLIND, says="insecure")
    assert not (tmp_path / "XX").exists()
    refused(world, tmp_path, "init", tmp_path / "XX", "--name", "XX", "--params", INSECURE_SEALED, "--allow-insecure",
            "--blind-params", "no-such-set", says="unknown blind parameter set")


def test_init_records_the_blind_set(world: World) -> None:
    for d in world.dirs.values():
        st = State.open(str(d))
        assert st.config.blind_params == INSECURE_BLIND and st.config.allow_insecure


def test_resolve_refuses_a_follow_up_whose_probe_misses_its_record(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = save_probe(world, tmp_path, 14)
    q = blind_query(world, tmp_path, probe, "CASE-B8", "q.msg")
    ok("answer", world.dirs["BB"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    (hit,) = ok_json("open", world.dirs["AA"], tmp_path / "a.msg")["candidates"]
    # An occupied slot that is not a hit, read from BB's secrets.
    bb = State.open(str(world.dirs["BB"]))
    rec = bb.blind_store.answered(q["query_id"])
    layout = bb.blind_store.layout(rec.version)
    target = next(make_handle(pos, slot) for pos, blk in enumerate(rec.order)
                  for slot, rid in enumerate(layout[blk]) if rid >= 0 and make_handle(pos, slot) != hit)
    # AA's own Requester, patched in this test only, believes the slot was a candidate.
    real = Requester._open_blind

    def believe(self: Requester, h: Any, body: Any) -> Any:
        opened = real(self, h, body)
        return dataclasses.replace(opened, candidates=(*opened.candidates, target))

    with monkeypatch.context() as m:
        m.setattr(Requester, "_open_blind", believe)
        ok("follow-up", world.dirs["AA"], tmp_path / "a.msg", target, "--out", tmp_path / "f.msg")
    # Where the refusal cannot be written, nothing is recorded.
    refused(world, tmp_path, "resolve", world.dirs["BB"], tmp_path / "f.msg", "--refusal-out",
            tmp_path / "missing" / "r.msg", says="no such file")
    # BB refuses (signed, logged, counted) and exits 0, as answer does with a refusal by policy.
    res = ok_json("resolve", world.dirs["BB"], tmp_path / "f.msg")
    assert res == {"format": "pprm.resolve/1", "ok": True, "state": "BB", "peer": "AA", "profile": "blind",
                   "query_id": q["query_id"], "followup_id": res["followup_id"], "reference": None,
                   "refused": "not-a-hit", "out": str(tmp_path / "f.msg.refusal")}
    assert ok_json("audit", "verify", world.dirs["BB"])["ok"] is True
    # AA opens the refusal: recorded, and reported as an error (exit 1, one line), as a refused query.
    r = cli("open", world.dirs["AA"], tmp_path / "f.msg.refusal")
    assert r.code == 1 and r.out == "" and r.err.count("\n") == 1
    assert "refused: not-a-hit" in r.err and q["query_id"] in r.err
    # The genuine candidate still resolves, and the text output of a refusal names its file.
    ok("follow-up", world.dirs["AA"], tmp_path / "a.msg", hit, "--out", tmp_path / "g.msg")
    assert ok("resolve", world.dirs["BB"], tmp_path / "g.msg").out.split()[0] == "BB-0000014"
