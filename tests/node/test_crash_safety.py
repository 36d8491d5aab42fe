"""A process killed in the middle of enrol, remove or answer leaves a consistent, verifiable state.

A child process loops over one operation on a real state directory and is
killed with SIGKILL at a random moment once it is under way. Afterwards:

* the audit log verifies (at most the two unsigned lines an interrupted
  append may leave, which the next append flags as ``resumed``);
* the gallery opens, every block its index names exists with the right
  shape, and every block decrypts (the owner's export);
* after :meth:`KeyService.reconcile`, the last logged gallery change names
  the gallery version on disk (a change logged write-ahead whose index
  switch never happened is marked ``aborted``);
* no answered query is missing from the log: every query id the replay
  cache marks as used has its ``answer`` entry;
* the state keeps working: a further enrolment succeeds and the log then
  verifies with nothing unsigned.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.state import State
from pprm.protocol.replay import ReplayCache
from pprm.synthetic import make_gallery, mate_probe
from tests.helpers import new_state

CHILD = r"""
import sys
import numpy as np
from pprm.node.keyservice import KeyService
from pprm.node.responder import Responder
from pprm.node.state import State

st = State.open(sys.argv[1])
ks = KeyService(st)
op, seed = sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(seed)
print("ready", flush=True)
if op == "enroll":
    for i in range(10_000):
        ks.enroll(rng.normal(size=(48, 512)).astype(np.float32), [f"K{seed}-{i}-{j}" for j in range(48)])
elif op == "remove":
    for ref in sorted(st.gallery().index.references.values()):
        ks.remove(ref)
elif op == "answer":
    responder = Responder(st)
    for path in sys.argv[4:]:
        with open(path, "rb") as fh:
            responder.answer(fh.read())
"""


def _run_and_kill(state_dir: str, op: str, seed: int, *extra: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, state_dir, op, str(seed), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"ready", (line, proc.stderr.read() if proc.stderr else b"")
    time.sleep(random.Random(seed).uniform(0.05, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _check_consistent(state_dir: str) -> State:
    st = State.open(state_dir)
    rep = st.audit.check()
    assert rep.unsigned <= 2
    gallery = st.gallery()
    for blk in gallery.index.blocks:
        arr = np.load(os.path.join(gallery.directory, "blocks", blk.file), mmap_mode="r")
        assert arr.shape == gallery.block_shape
    assert len(gallery.index.references) == len(gallery)
    ks = KeyService(st)
    ks.reconcile()
    changes = [e for e in st.audit.entries() if e["event"] in ("enroll", "remove", "aborted")]
    if changes:
        assert changes[-1]["data"]["gallery"] == st.gallery().version
    ids, templates = ks.export_templates()
    assert len(ids) == len(gallery) and np.isfinite(templates).all()
    return st


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_during_enrolment(tmp_path: Path, seed: int) -> None:
    st = new_state(tmp_path / "DE", "DE")
    KeyService(st).enroll(np.random.default_rng(0).normal(size=(100, 512)).astype(np.float32),
                          [f"BASE-{i}" for i in range(100)])
    _run_and_kill(st.dir, "enroll", seed)
    st = _check_consistent(st.dir)
    before = len(st.gallery())
    KeyService(st).enroll(np.ones((1, 512), np.float32), ["AFTER"])
    assert len(st.gallery()) == before + 1
    assert st.audit.check().unsigned == 0


@pytest.mark.parametrize("seed", [4, 5])
def test_killed_during_removal(tmp_path: Path, seed: int) -> None:
    st = new_state(tmp_path / "DE", "DE")
    KeyService(st).enroll(np.random.default_rng(1).normal(size=(1500, 512)).astype(np.float32),
                          [f"R-{i:04d}" for i in range(1500)])
    _run_and_kill(st.dir, "remove", seed)
    st = _check_consistent(st.dir)
    assert 0 < len(st.gallery()) <= 1500
    KeyService(st).remove(sorted(st.gallery().index.references.values())[-1])
    assert st.audit.check().unsigned == 0


@pytest.mark.parametrize("seed", [6, 7])
def test_killed_while_answering(tmp_path: Path, seed: int) -> None:
    fr, de = new_state(tmp_path / "FR", "FR"), new_state(tmp_path / "DE", "DE")
    fr.trust(de.card_bytes)
    de.trust(fr.card_bytes)
    gallery = make_gallery(800, seed=seed, prefix="FR")
    KeyService(fr).enroll(gallery.templates, gallery.references)
    req = Requester(de)
    paths = []
    for i in range(60):
        q = req.query("FR", mate_probe(gallery, i, seed=i), case="C-CRASH", purpose="serious-crime")
        path = tmp_path / f"q{i}.msg"
        path.write_bytes(q)
        paths.append(str(path))
    _run_and_kill(fr.dir, "answer", seed, *paths)
    st = _check_consistent(fr.dir)
    logged = {e["data"]["query_id"] for e in st.audit.entries() if e["event"] == "answer"}
    replay = ReplayCache(fr.path("replay.json")).entries()
    used = set(replay.get("DE", {}))
    # Logged before marked used: a used query id always has its log entry.
    assert used <= logged
