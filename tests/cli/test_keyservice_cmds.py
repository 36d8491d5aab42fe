"""``pprm keyservice split|serve|join`` and the file flow of a split state, through the CLI.

The key service runs as a real ``pprm keyservice serve`` process; every verb
that needs a secret reaches it at the address recorded at split time, or at
``--key-service``. Outcomes are compared with the plaintext truth.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from tests.cli.worlds import DIM, truth
from tests.helpers import INSECURE_SEALED, cli, ok, ok_json, spawn

GALLERY = 300


@pytest.fixture
def split_cli(tmp_path: Path) -> Iterator[tuple[Path, Path, Path, synthetic.SyntheticGallery]]:
    de, fr = tmp_path / "DE", tmp_path / "FR"
    for name, d in (("DE", de), ("FR", fr)):
        ok("init", d, "--name", name, "--params", INSECURE_SEALED, "--allow-insecure")
    for a, b in ((de, fr), (fr, de)):
        (tmp_path / "card").write_bytes(cli("card", b).out.encode())
        ok("trust", a, tmp_path / "card")
    g = synthetic.make_gallery(GALLERY, dim=DIM, seed=5, prefix="FR")
    np.save(tmp_path / "t.npy", g.templates)
    (tmp_path / "r.txt").write_text("\n".join(g.references) + "\n", encoding="utf-8")
    ok("enroll", fr, "--templates", tmp_path / "t.npy", "--refs", tmp_path / "r.txt")
    short = Path(tempfile.mkdtemp(prefix="pks-"))
    try:
        yield de, fr, short / "ks", g
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_split_file_flow_then_join(split_cli: tuple[Path, Path, Path, synthetic.SyntheticGallery],
                                   tmp_path: Path) -> None:
    de, fr, keydir, g = split_cli
    info = ok_json("keyservice", "split", fr, keydir)
    assert info["address"] == str(keydir / "keyservice.sock")
    assert not (fr / "private" / "ckks-secret.key").exists() and (keydir / "private" / "ckks-secret.key").exists()

    # No key service running: a verb that needs one says so in one line and changes nothing.
    probe = synthetic.mate_probe(g, 7, seed=1)
    np.save(tmp_path / "p.npy", probe)
    ok("query", de, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C-1", "--purpose", "serious-crime",
       "--out", tmp_path / "q.msg")
    r = cli("answer", fr, tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    assert r.code == 1 and r.err.count("\n") == 1 and "key service" in r.err, r
    assert not (tmp_path / "a.msg").exists()

    ks = spawn(["keyservice", "serve", str(keydir)])
    try:
        ok("answer", fr, tmp_path / "q.msg", "--out", tmp_path / "a.msg", "--key-service", info["address"])
        opened = ok_json("open", de, tmp_path / "a.msg")
        learned = []
        for i, tok in enumerate(opened["candidates"]):
            ok("follow-up", de, tmp_path / "a.msg", tok, "--out", tmp_path / f"f{i}.msg")
            learned.append(ok_json("resolve", fr, tmp_path / f"f{i}.msg")["reference"])
        assert sorted(learned) == truth(g, probe) == ["FR-0000007"]
        assert ok_json("remove", fr, "FR-0000007")["total"] == GALLERY - 1
        extra = synthetic.make_gallery(2, dim=DIM, seed=9, prefix="XX")
        np.save(tmp_path / "x.npy", extra.templates)
        (tmp_path / "x.txt").write_text("\n".join(extra.references) + "\n", encoding="utf-8")
        assert ok_json("enroll", fr, "--templates", tmp_path / "x.npy", "--refs", tmp_path / "x.txt")["total"] == \
            GALLERY + 1
        # join refuses while the key service runs.
        r = cli("keyservice", "join", fr, keydir)
        assert r.code == 1 and "running" in r.err
        assert ok_json("audit", "verify", keydir)["ok"] is True
        # The front's verify checks the key service's log too (found from the recorded socket path).
        both = ok_json("audit", "verify", fr)
        (_front, ks_log) = both["logs"]
        assert ks_log["ok"] is True and ks_log["entries"] >= 5  # split, policy, release, commit, resolve, ...
    finally:
        code, err = ks.stop()
    assert code in (0, -15), err
    assert ok_json("keyservice", "join", fr, keydir)["joined"] is True
    assert not keydir.exists() and (fr / "private" / "ckks-secret.key").exists()
    # Self-contained again: the same verbs run without a key service.
    ok("query", de, "--probe", tmp_path / "p.npy", "--to", "FR", "--case", "C-2", "--purpose", "serious-crime",
       "--out", tmp_path / "q2.msg")
    ok("answer", fr, tmp_path / "q2.msg", "--out", tmp_path / "a2.msg")
    assert ok_json("open", de, tmp_path / "a2.msg")["hit"] is False  # FR-0000007 was removed
    r = cli("answer", fr, tmp_path / "q2.msg", "--out", tmp_path / "a3.msg", "--key-service", "/tmp/x.sock")
    assert r.code == 1 and "not split" in r.err
    (_front, kept) = ok_json("audit", "verify", fr)["logs"]
    assert "kept at join" in kept["log"] and kept["entries"] == ks_log["entries"]
    assert os.listdir(fr / "keyservice-audit")
    # A line of the kept key-service log altered: verify names that log and fails.
    (log_path,) = (fr / "keyservice-audit").glob("*/audit.log")
    lines = log_path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"time":', b'"time":1', 1)
    log_path.write_bytes(b"".join(lines))
    r = cli("audit", "verify", fr)
    assert r.code == 1 and "key service" in r.err and "seq 2 (line 3)" in r.err, r
