"""The verbs that create and look after a state (pprm.cli.state_cmds), through the CLI.

On the sealed world of :mod:`tests.cli.worlds`: what ``init`` and ``info``
report, and ``enroll``, ``trust``, ``audit verify`` and an unknown state
directory refused cleanly (exit 1, one line, nothing changed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pprm import synthetic
from pprm.crypto import params as param_sets
from pprm.node.state import State
from tests.cli.worlds import (
    DIM,
    TAU,
    World,
    forged_card,
    refused,
)
from tests.helpers import INSECURE_SEALED, ok, ok_json


def test_init_prints_public_identity_only(world: World) -> None:
    de = world.init["DE"]
    assert set(de) == {"format", "ok", "state", "dir", "params", "params_digest", "blind_params", "profiles",
                       "threshold", "k", "dim", "purposes", "fingerprint", "key_id"}
    assert de["purposes"] == ["serious-crime", "missing-person", "unidentified-remains"]
    st = State.open(str(world.dirs["DE"]))
    assert de["fingerprint"] == st.card.identity.fingerprint.hex()
    assert de["key_id"] == st.key_id and de["params"] == INSECURE_SEALED
    text = json.dumps(world.init)
    for f in ("identity.key", "token.key"):
        secret = (world.dirs["DE"] / "private" / f).read_bytes()
        for i in range(0, len(secret) - 8, 8):  # no 8-byte window of a secret, in hex
            assert secret[i:i + 8].hex() not in text


def test_info_reports_settings_gallery_and_roster(world: World) -> None:
    info = ok_json("info", world.dirs["NL"])
    assert info["state"] == "NL" and info["params"] == INSECURE_SEALED
    assert info["threshold"] == TAU and info["k"] == 10 and info["dim"] == DIM
    assert info["gallery"] >= 1 and info["roster"] == ["DE", "FR"]
    assert info["backend"] in ("numpy", "native")
    text = ok("info", world.dirs["NL"]).out
    assert "roster       DE, FR" in text


def test_enroll_refuses_wrong_dimension(world: World, tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.ones((2, DIM - 1), np.float32))
    (tmp_path / "r.txt").write_text("X-1\nX-2\n")
    refused(world, tmp_path, "enroll", world.dirs["FR"], "--templates", tmp_path / "t.npy", "--refs",
            tmp_path / "r.txt", says="shape")


def test_enroll_refuses_nan(world: World, tmp_path: Path) -> None:
    t = synthetic.make_gallery(3, dim=DIM, seed=5).templates.copy()
    t[1, 17] = np.nan
    np.save(tmp_path / "t.npy", t)
    (tmp_path / "r.txt").write_text("X-1\nX-2\nX-3\n")
    refused(world, tmp_path, "enroll", world.dirs["FR"], "--templates", tmp_path / "t.npy", "--refs",
            tmp_path / "r.txt", says="non-finite")


@pytest.mark.parametrize(("refs", "says"), [
    ("X-1\nX-1\n", "twice"),            # duplicate within the file
    ("X-1\nNL-0000002\n", "already"),   # duplicate against the gallery
    ("X-1\n\n", "blank"),               # blank line (two refs for two rows otherwise)
    ("X-1\n", "references"),            # count mismatch
    ("", "empty"),
])
def test_enroll_refuses_bad_references(world: World, tmp_path: Path, refs: str, says: str) -> None:
    np.save(tmp_path / "t.npy", synthetic.make_gallery(2, dim=DIM, seed=6).templates)
    (tmp_path / "r.txt").write_text(refs)
    refused(world, tmp_path, "enroll", world.dirs["NL"], "--templates", tmp_path / "t.npy", "--refs",
            tmp_path / "r.txt", says=says)


@pytest.mark.parametrize("content", ["garbage", "truncated", "pickle", "npz"])
def test_enroll_refuses_malformed_npy(world: World, tmp_path: Path, content: str) -> None:
    path = tmp_path / "t.npy"
    if content == "garbage":
        path.write_bytes(b"this is not numpy")
    elif content == "truncated":
        np.save(path, np.ones((2, DIM), np.float32))
        path.write_bytes(path.read_bytes()[:-7])
    elif content == "pickle":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    else:
        with open(path, "wb") as fh:
            np.savez(fh, a=np.ones((2, DIM)))
    (tmp_path / "r.txt").write_text("X-1\nX-2\n")
    refused(world, tmp_path, "enroll", world.dirs["NL"], "--templates", path, "--refs", tmp_path / "r.txt",
            says="npy")


def test_trust_refuses_card_with_mismatched_parameter_digest(world: World, tmp_path: Path) -> None:
    other = param_sets.get("pprm-sealed-n4096-v1")
    (tmp_path / "fr.card").write_bytes(forged_card(world, "FR", INSECURE_SEALED, other.digest))
    refused(world, tmp_path, "trust", world.dirs["DE"], tmp_path / "fr.card", says="digest")


def test_trust_refuses_insecure_card_in_a_production_state(world: World, tmp_path: Path) -> None:
    prod = tmp_path / "AT"
    ok("init", prod, "--name", "AT", "--params", "pprm-sealed-n4096-v1")
    refused(world, tmp_path, "trust", prod, world.cards["FR"], says="insecure")


def test_audit_verify_reports_a_broken_chain(world: World, tmp_path: Path) -> None:
    copy = tmp_path / "DE"
    shutil.copytree(world.dirs["DE"], copy)
    lines = (copy / "audit.log").read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    (copy / "audit.log").write_bytes(b"".join(lines[:1] + lines[2:]))  # delete an entry
    refused(world, tmp_path, "audit", "verify", copy, says="chain breaks at seq 1 (line 2)")


def test_unknown_state_directory_is_one_line(world: World, tmp_path: Path) -> None:
    refused(world, tmp_path, "info", tmp_path / "nothing", says="not a pprm state directory")
