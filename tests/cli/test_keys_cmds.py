"""``pprm keys list|abandon`` (pprm.cli.keys_cmds), and recovering a blind case whose key announcement was lost.

Two states (AA asks, BB answers, blind profile on the test-only sets) are
made through the CLI, as in tests/cli/test_flow_cmds_blind.py. Each test uses
its own cases, so that it can filter the shared requester's keys by case.
Every refused command must exit 1 with one ``pprm: error:`` line and change
nothing (:func:`tests.cli.worlds.refused`); every answer that is opened is
compared with the plaintext truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pprm import synthetic
from pprm.protocol.delivery import unpack_delivery
from tests.cli.worlds import refused
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED, cli, ok, ok_json, plaintext_hits, snapshot

DIM = 512
TAU = 0.4
GALLERY = 100
NAMES = ("AA", "BB")
KEY_FIELDS = {"key_id", "peer", "case", "created", "expires", "status", "retired", "announced_with", "confirmed",
              "pending"}


@dataclass
class World:
    root: Path
    dirs: dict[str, Path]
    gallery: synthetic.SyntheticGallery


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """AA and BB initialised with the insecure sets, mutually trusted, BB enrolled: all via the CLI."""
    root = tmp_path_factory.mktemp("cli-keys")
    dirs = {n: root / n for n in NAMES}
    for n, d in dirs.items():
        ok("init", d, "--name", n, "--params", INSECURE_SEALED, "--blind-params", INSECURE_BLIND, "--allow-insecure")
    for a in NAMES:
        for b in NAMES:
            if a != b:
                (root / f"{b}.card").write_text(ok("card", dirs[b]).out)
                ok("trust", dirs[a], root / f"{b}.card")
    gallery = synthetic.make_gallery(GALLERY, dim=DIM, seed=41, prefix="BB")
    np.save(root / "templates.npy", gallery.templates)
    (root / "refs.txt").write_text("\n".join(gallery.references) + "\n", encoding="utf-8")
    ok("enroll", dirs["BB"], "--templates", root / "templates.npy", "--refs", root / "refs.txt")
    return World(root, dirs, gallery)


def mate(world: World, where: Path, index: int) -> tuple[Path, set[str]]:
    """A probe file for a mate of BB's record ``index``, and the plaintext truth for it."""
    probe = synthetic.mate_probe(world.gallery, index, seed=6)
    hits = plaintext_hits(world.gallery.templates, world.gallery.references, probe, TAU)
    assert hits == {world.gallery.references[index]}
    np.save(where / f"p{index}.npy", probe)
    return where / f"p{index}.npy", hits


def query(world: World, probe: Path, case: str, out: Path, *extra: object) -> dict[str, Any]:
    return ok_json("query", world.dirs["AA"], "--probe", probe, "--to", "BB", "--case", case,
                   "--purpose", "serious-crime", "--out", out, "--profile", "blind", *extra)


def keys_of(world: World, *filters: object) -> list[dict[str, Any]]:
    listed = ok_json("keys", "list", world.dirs["AA"], *filters)
    assert listed["format"] == "pprm.keys.list/1" and listed["ok"] is True and listed["state"] == "AA"
    for k in listed["keys"]:
        assert set(k) == KEY_FIELDS
    return list(listed["keys"])


def answered_and_opened(world: World, where: Path, query_file: Path, truth: set[str]) -> dict[str, Any]:
    """BB answers, AA opens; the number of candidates is the plaintext truth's."""
    out = where / f"a-{query_file.name}"
    ok("answer", world.dirs["BB"], query_file, "--out", out)
    opened = ok_json("open", world.dirs["AA"], out)
    assert opened["hit"] is bool(truth) and len(opened["candidates"]) == len(truth)
    return dict(opened)


def test_list_shows_a_key_from_its_query_to_its_answer(world: World, tmp_path: Path) -> None:
    probe, truth = mate(world, tmp_path, 3)
    q = query(world, probe, "K-LIST", tmp_path / "q.msg")
    (k,) = keys_of(world, "--case", "K-LIST")
    assert k["key_id"] == q["key_id"] and (k["peer"], k["case"], k["status"]) == ("BB", "K-LIST", "live")
    assert k["announced_with"] == q["query_id"] and k["confirmed"] is False and k["pending"] == [q["query_id"]]
    assert k["retired"] is None and k["expires"] > k["created"]
    text = ok("keys", "list", world.dirs["AA"], "--case", "K-LIST").out
    assert q["key_id"] in text and f"sent with {q['query_id']}" in text and "status: live" in text
    assert f"pending queries: {q['query_id']}" in text
    answered_and_opened(world, tmp_path, tmp_path / "q.msg", truth)
    (k,) = keys_of(world, "--case", "K-LIST")
    assert k["confirmed"] is True and k["pending"] == []
    assert "announcement: confirmed" in ok("keys", "list", world.dirs["AA"], "--case", "K-LIST").out


def test_list_filters_by_peer_and_case(world: World, tmp_path: Path) -> None:
    probe, _ = mate(world, tmp_path, 4)
    a = query(world, probe, "K-F1", tmp_path / "a.msg")
    b = query(world, probe, "K-F2", tmp_path / "b.msg")
    assert a["key_id"] != b["key_id"]  # one key per case
    assert [k["key_id"] for k in keys_of(world, "--case", "K-F2")] == [b["key_id"]]
    assert [k["key_id"] for k in keys_of(world, "--peer", "BB", "--case", "K-F1")] == [a["key_id"]]
    by_peer = {k["key_id"] for k in keys_of(world, "--peer", "BB")}
    assert {a["key_id"], b["key_id"]} <= by_peer == {k["key_id"] for k in keys_of(world)}
    assert keys_of(world, "--case", "K-NONE") == []
    assert ok("keys", "list", world.dirs["AA"], "--case", "K-NONE").out == (
        "no blind key pairs matching --case K-NONE (a blind query makes one per peer and case)\n")
    # BB has made no blind query: it holds no key pair of its own.
    assert ok_json("keys", "list", world.dirs["BB"])["keys"] == []
    refused(world, tmp_path, "keys", "list", world.dirs["AA"], "--peer", "XX", says="not in the roster")


def test_abandon_refuses_bad_input_and_changes_nothing(world: World, tmp_path: Path) -> None:
    probe, _ = mate(world, tmp_path, 5)
    q = query(world, probe, "K-BAD", tmp_path / "q.msg")
    err = refused(world, tmp_path, "keys", "abandon", world.dirs["AA"], "0" * 32, says="no blind key")
    assert "pprm keys list" in err
    refused(world, tmp_path, "keys", "abandon", world.dirs["AA"], "--peer", "XX", says="not in the roster")
    for argv in ([q["key_id"], "--case", "K-BAD"], []):  # usage errors: exit 2, nothing changes
        before = snapshot(str(world.root))
        r = cli("keys", "abandon", world.dirs["AA"], *argv)
        assert r.code == 2 and "KEY_ID" in r.err and snapshot(str(world.root)) == before
    (k,) = keys_of(world, "--case", "K-BAD")
    assert k["status"] == "live"


def test_abandon_by_key_id_retires_it_and_its_pending_queries_cannot_be_opened(world: World, tmp_path: Path) -> None:
    probe, truth = mate(world, tmp_path, 6)
    q = query(world, probe, "K-ID", tmp_path / "q.msg")
    gone = ok_json("keys", "abandon", world.dirs["AA"], q["key_id"])
    (k,) = gone["abandoned"]
    assert k["key_id"] == q["key_id"] and k["pending"] == [q["query_id"]] and k["status"] == "retired"
    (k,) = keys_of(world, "--case", "K-ID")
    assert (k["status"], k["retired"]) == ("retired", "abandoned by the operator")
    assert not (world.dirs["AA"] / "private" / "blind" / f"{q['key_id']}.sk").exists()
    assert "which can no longer be opened" in ok("keys", "list", world.dirs["AA"], "--case", "K-ID").out
    # Abandoning it again changes nothing, and says so (exit 0).
    before = snapshot(str(world.root))
    assert "nothing to abandon" in ok("keys", "abandon", world.dirs["AA"], q["key_id"]).out
    assert ok_json("keys", "abandon", world.dirs["AA"], q["key_id"])["abandoned"] == []
    assert snapshot(str(world.root)) == before
    # BB can still answer the pending query (its file carries the key), but AA cannot open the answer.
    ok("answer", world.dirs["BB"], tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    err = refused(world, tmp_path, "open", world.dirs["AA"], tmp_path / "a.msg", says="retired")
    assert "query again" in err
    # The next query of the case makes and announces a new key, and is answered.
    again = query(world, probe, "K-ID", tmp_path / "r.msg")
    assert again["announced"] is True and again["key_id"] != q["key_id"]
    answered_and_opened(world, tmp_path, tmp_path / "r.msg", truth)
    entries = ok_json("audit", "show", world.dirs["AA"])["entries"]
    retired = [e for e in entries if e.get("event") == "keys_retired" and e["data"]["key_id"] == q["key_id"]]
    assert [(e["data"]["reason"], e["data"]["pending"]) for e in retired] == [("abandoned by the operator", 1)]


def test_a_lost_announcement_is_recovered_with_keys_abandon(world: World, tmp_path: Path) -> None:
    probe, truth = mate(world, tmp_path, 7)
    # The two-file flow, and the announcement file is lost on the way.
    lost = query(world, probe, "K-LOST", tmp_path / "q.msg", "--keys-out", tmp_path / "q.keys")
    (tmp_path / "q.keys").unlink()
    err = refused(world, tmp_path, "answer", world.dirs["BB"], tmp_path / "q.msg", "--out", tmp_path / "a.msg",
                  says="unknown blind key id")
    assert "pprm keys abandon" in err and "--keys FILE" in err
    # A later query of the case would use the same unknown key: BB refuses it the same way.
    later = query(world, probe, "K-LOST", tmp_path / "q2.msg")
    assert later["announced"] is False and later["key_id"] == lost["key_id"]
    refused(world, tmp_path, "answer", world.dirs["BB"], tmp_path / "q2.msg", "--out", tmp_path / "a.msg",
            says="pprm keys abandon")
    (k,) = keys_of(world, "--case", "K-LOST")
    assert k["confirmed"] is False and sorted(k["pending"]) == sorted([lost["query_id"], later["query_id"]])
    # AA abandons the case's key; the text names the queries that are lost.
    out = ok("keys", "abandon", world.dirs["AA"], "--peer", "BB", "--case", "K-LOST").out
    assert out.startswith("abandoned 1 blind key pair(s)") and lost["query_id"] in out and "query again" in out
    # The next query carries a new key's announcement in its one file, and is answered as the truth says.
    fresh = query(world, probe, "K-LOST", tmp_path / "q3.msg")
    assert fresh["announced"] is True and fresh["key_id"] != lost["key_id"]
    assert len(unpack_delivery((tmp_path / "q3.msg").read_bytes())[1]) == 1
    answered_and_opened(world, tmp_path, tmp_path / "q3.msg", truth)
    statuses = {k["key_id"]: (k["status"], k["confirmed"]) for k in keys_of(world, "--case", "K-LOST")}
    assert statuses == {lost["key_id"]: ("retired", False), fresh["key_id"]: ("live", True)}


def test_abandon_by_peer_takes_every_live_key_of_that_peer(world: World, tmp_path: Path) -> None:
    probe, _ = mate(world, tmp_path, 8)
    query(world, probe, "K-ALL1", tmp_path / "a.msg")
    query(world, probe, "K-ALL2", tmp_path / "b.msg")
    gone = ok_json("keys", "abandon", world.dirs["AA"], "--peer", "BB")["abandoned"]
    assert {"K-ALL1", "K-ALL2"} <= {k["case"] for k in gone}
    assert all(k["status"] == "retired" for k in keys_of(world, "--peer", "BB"))
