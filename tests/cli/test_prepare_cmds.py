"""``pprm prepare DIR``: the blind database built ahead of time, through the CLI.

Two states (AA asks, BB answers in the blind profile) on the test-only sets,
made and enrolled through the CLI. ``prepare`` builds the database, a second
run does nothing, an enrolment makes the next run build the new version; a
blind answer after ``prepare`` uses the prepared database and finds exactly
the plaintext truth. For a split state the database is built in the key
service (a real ``pprm keyservice serve`` process). Output is captured, so
stderr is not a terminal: no progress is drawn and stderr stays empty.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.node.state import State
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED, cli, ok, ok_json, plaintext_hits, snapshot, spawn

DIM = 512
GALLERY = 100
KEYS = {"format", "ok", "state", "version", "templates", "blocks", "built", "reused", "seconds", "key_service"}


def _init(root: Path, names: tuple[str, ...]) -> dict[str, Path]:
    dirs = {n: root / n for n in names}
    for n, d in dirs.items():
        ok("init", d, "--name", n, "--params", INSECURE_SEALED, "--blind-params", INSECURE_BLIND, "--allow-insecure",
           "--blind-peer", "BB")
    for a in names:
        for b in names:
            if a != b:
                (root / f"{b}.card").write_text(ok("card", dirs[b]).out)
                ok("trust", dirs[a], root / f"{b}.card")
    return dirs


def _enroll(state_dir: Path, where: Path, g: synthetic.SyntheticGallery, name: str) -> dict[str, int]:
    np.save(where / f"{name}.npy", g.templates)
    (where / f"{name}.txt").write_text("\n".join(g.references) + "\n", encoding="utf-8")
    return ok_json("enroll", state_dir, "--templates", where / f"{name}.npy", "--refs", where / f"{name}.txt")


def _search(dirs: dict[str, Path], where: Path, probe: np.ndarray, case: str, *answer_extra: object) -> list[str]:
    """AA asks BB (blind) through files; returns the candidates AA opens."""
    np.save(where / f"{case}.npy", probe)
    q = ok_json("query", dirs["AA"], "--probe", where / f"{case}.npy", "--to", "BB", "--case", case, "--purpose",
                "serious-crime", "--out", where / f"{case}.q")
    assert q["profile"] == "blind"  # BB is a blind peer of AA (init --blind-peer BB)
    r = ok("answer", dirs["BB"], where / f"{case}.q", "--out", where / f"{case}.a", *answer_extra)
    assert r.err == ""
    opened = ok_json("open", dirs["AA"], where / f"{case}.a")
    return list(opened["candidates"])


def _truth(galleries: list[synthetic.SyntheticGallery], probe: np.ndarray) -> set[str]:
    templates = np.concatenate([g.templates for g in galleries])
    refs = [r for g in galleries for r in g.references]
    return plaintext_hits(templates, refs, probe, 0.4)


def test_prepare_builds_then_does_nothing_then_refreshes_after_an_enrolment(tmp_path: Path) -> None:
    dirs = _init(tmp_path, ("AA", "BB"))
    bb = dirs["BB"]
    g = synthetic.make_gallery(GALLERY, dim=DIM, seed=51, prefix="BB")
    _enroll(bb, tmp_path, g, "g")
    v1 = State.open(str(bb)).gallery().version

    r = ok("prepare", bb, "--json")
    assert r.err == ""  # not a terminal: no bar, nothing on stderr
    first = json.loads(r.out)
    assert set(first) == KEYS
    assert first["state"] == "BB" and first["version"] == v1 and first["built"] is True
    assert (first["templates"], first["blocks"], first["key_service"]) == (GALLERY, 1, None)
    assert isinstance(first["seconds"], float) and first["seconds"] >= 0
    assert (bb / "private" / "blind-db" / v1 / "complete").exists()

    sealed = snapshot(str(bb / "private" / "blind-db"))
    again = ok("prepare", bb)
    assert again.err == "" and "nothing to do" in again.out and v1[:12] in again.out
    assert ok_json("prepare", bb)["built"] is False
    assert snapshot(str(bb / "private" / "blind-db")) == sealed

    # A blind answer after prepare uses the prepared database (nothing rebuilt) and finds the truth.
    probe = synthetic.mate_probe(g, 9, seed=1)
    truth = _truth([g], probe)
    assert truth == {g.references[9]}
    assert len(_search(dirs, tmp_path, probe, "C-1")) == len(truth)
    assert snapshot(str(bb / "private" / "blind-db")) == sealed

    # After an enrolment the next prepare builds the new version; the old one keeps only its layout.
    extra = synthetic.make_gallery(5, dim=DIM, seed=52, prefix="XX")
    assert _enroll(bb, tmp_path, extra, "x")["total"] == GALLERY + 5
    v2 = State.open(str(bb)).gallery().version
    assert v2 != v1
    refreshed = ok_json("prepare", bb)
    assert (refreshed["version"], refreshed["built"], refreshed["templates"]) == (v2, True, GALLERY + 5)
    assert refreshed["reused"] == 0  # the five went into the one block, which is re-encoded
    assert sorted(p.name for p in (bb / "private" / "blind-db" / v1).iterdir()) == ["layout.sealed"]
    assert (bb / "private" / "blind-db" / v2 / "complete").exists()
    assert ok_json("prepare", bb)["built"] is False

    probe = synthetic.mate_probe(extra, 2, seed=3)
    truth = _truth([g, extra], probe)
    assert truth == {extra.references[2]}
    assert len(_search(dirs, tmp_path, probe, "C-2")) == len(truth)


def test_prepare_refuses_a_key_service_for_a_state_that_is_not_split(tmp_path: Path) -> None:
    dirs = _init(tmp_path, ("BB",))
    r = cli("prepare", dirs["BB"], "--key-service", "/tmp/nowhere.sock")
    assert r.code == 1 and r.out == "" and r.err.count("\n") == 1 and "not split" in r.err
    assert not (dirs["BB"] / "private" / "blind-db").exists()
    r = cli("prepare", tmp_path / "missing")
    assert r.code == 1 and r.err.startswith("pprm: error:")


@pytest.fixture
def split_world(tmp_path: Path) -> Iterator[tuple[dict[str, Path], Path, synthetic.SyntheticGallery]]:
    dirs = _init(tmp_path, ("AA", "BB"))
    g = synthetic.make_gallery(GALLERY, dim=DIM, seed=53, prefix="BB")
    _enroll(dirs["BB"], tmp_path, g, "g")
    short = Path(tempfile.mkdtemp(prefix="pks-"))  # unix socket paths are short
    try:
        yield dirs, short / "ks", g
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_prepare_a_split_state_through_its_key_service(
        split_world: tuple[dict[str, Path], Path, synthetic.SyntheticGallery], tmp_path: Path) -> None:
    dirs, keydir, g = split_world
    bb = dirs["BB"]
    address = ok_json("keyservice", "split", bb, keydir)["address"]
    # No key service running: one error line, nothing built anywhere.
    r = cli("prepare", bb)
    assert r.code == 1 and r.err.count("\n") == 1 and "key service" in r.err
    assert not (keydir / "private" / "blind-db").exists()

    ks = spawn(["keyservice", "serve", str(keydir)])
    try:
        version = State.open(str(bb)).gallery().version
        r = ok("prepare", bb, "--json")
        assert r.err == ""
        done = json.loads(r.out)
        assert set(done) == KEYS and done["key_service"] == address
        assert (done["version"], done["built"], done["templates"]) == (version, True, GALLERY)
        assert (keydir / "private" / "blind-db" / version / "complete").exists()
        assert not (bb / "blind").exists() and not (bb / "private" / "blind-db").exists()  # never at the front
        text = ok("prepare", bb).out
        assert "nothing to do" in text and "key service" in text

        probe = synthetic.mate_probe(g, 4, seed=2)
        truth = _truth([g], probe)
        assert truth == {g.references[4]}
        assert len(_search(dirs, tmp_path, probe, "C-S")) == len(truth)
    finally:
        code, err = ks.stop()
    assert code in (0, -15), err
