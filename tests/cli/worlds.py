"""The sealed-profile world the CLI tests share, and the check every refused command must pass.

Three states (DE, FR, NL) are created, exchange cards and enrol galleries
through the CLI itself (``main(argv)`` in-process; some tests add real
subprocess calls of the installed ``pprm`` script). Every encrypted outcome
is compared with the plaintext truth: the references whose float64 score
between the normalised float32 probe and template is at least the
threshold, with test data chosen so that no score lies within the 1e-3
decision margin.

Every refused input must exit 1 with exactly one ``pprm: error:`` line on
stderr, nothing on stdout, no traceback, and leave every state directory and
the message directory byte-for-byte (and mode-for-mode) unchanged, with no
output file created (:func:`refused`).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pprm import synthetic
from pprm.matching.templates import normalise_probe, normalise_templates
from pprm.node.state import State
from pprm.protocol.card import make_card
from tests.helpers import INSECURE_SEALED, cli, ok, ok_json, snapshot

DIM = 512
TAU = 0.4
MARGIN = 1e-3
NAMES = ("DE", "FR", "NL")
GALLERY = 300
OPEN_KEYS = {"format", "ok", "state", "peer", "profile", "query_id", "hit", "candidates"}


class HasRoot(Protocol):
    """A world: what matters to :func:`refused` is the directory holding its states."""

    root: Path


def pprm_script() -> str:
    """The installed console script."""
    script = Path(sys.executable).with_name("pprm")
    found = str(script) if script.exists() else shutil.which("pprm")
    assert found, "the pprm console script is not installed"
    return found


def truth(gallery: synthetic.SyntheticGallery, probe: np.ndarray, removed: frozenset[str] = frozenset()) -> list[str]:
    """Plaintext ground truth: refs with exact float64 score >= tau (margin checked)."""
    g = normalise_templates(gallery.templates, DIM).astype(np.float64)
    s = g @ normalise_probe(probe, DIM).astype(np.float64)
    assert np.min(np.abs(s - TAU)) >= MARGIN, "test data has a score inside the decision margin"
    return sorted(r for r, v in zip(gallery.references, s, strict=True) if v >= TAU and r not in removed)


@dataclass
class World:
    root: Path
    dirs: dict[str, Path]
    cards: dict[str, Path]
    init: dict[str, dict[str, object]]
    galleries: dict[str, synthetic.SyntheticGallery]


def write_gallery(where: Path, gallery: synthetic.SyntheticGallery, newline: str = "\n") -> tuple[Path, Path]:
    tpl, refs = where / f"{gallery.references[0][:2]}-templates.npy", where / f"{gallery.references[0][:2]}.txt"
    np.save(tpl, gallery.templates)
    refs.write_text(newline.join(gallery.references) + newline, encoding="utf-8")
    return tpl, refs


def refused(world: HasRoot, scratch: Path, *argv: object, says: str = "") -> str:
    """Run a command that must fail cleanly and change nothing; return its error line."""
    roots = [world.root, scratch]
    before = [snapshot(str(r)) for r in roots]
    r = cli(*argv)
    after = [snapshot(str(r)) for r in roots]
    assert r.code == 1, r
    assert r.out == ""
    assert r.err.endswith("\n") and r.err.count("\n") == 1, r.err
    assert r.err.startswith("pprm: error: ") and "Traceback" not in r.err
    for b, a in zip(before, after, strict=True):
        changed = sorted(k for k in b.keys() | a.keys() if b.get(k) != a.get(k))
        assert changed == [], changed
    assert says.lower() in r.err.lower(), r.err
    return r.err


def make_query(world: World, scratch: Path, sender: str, to: str, name: str = "q.msg") -> Path:
    g = world.galleries.get(to) or world.galleries["FR"]
    np.save(scratch / "probe.npy", synthetic.mate_probe(g, 3, seed=9))
    ok("query", world.dirs[sender], "--probe", scratch / "probe.npy", "--to", to, "--case", "C-9",
       "--purpose", "serious-crime", "--out", scratch / name)
    return scratch / name


def forged_card(world: World, name: str, params: str, digest: str) -> bytes:
    """``name``'s card, validly self-signed, announcing other parameters."""
    st = State.open(str(world.dirs[name]))
    return make_card(st.identity(), params, digest, DIM, st.key_id, st.card.created)



def build_world(root: Path) -> World:
    """DE, FR, NL initialised in ``root``, mutually trusted and (FR, NL) enrolled, all via the CLI."""
    dirs = {n: root / n for n in NAMES}
    infos: dict[str, dict[str, object]] = {}
    for n, d in dirs.items():
        r = ok("init", d, "--name", n, "--params", INSECURE_SEALED, "--allow-insecure", "--json")
        infos[n] = json.loads(r.out)
        assert "insecure" in r.err  # the warning, on stderr only
    cards = {}
    for n, d in dirs.items():
        r = ok("card", d)
        assert r.out.encode() == (d / "card.json").read_bytes()
        cards[n] = root / f"{n}.card"
        cards[n].write_text(r.out)
    for a in NAMES:
        for b in NAMES:
            if a != b:
                info = ok_json("trust", dirs[a], cards[b])
                assert info["peer"] == b and info["fingerprint"] == infos[b]["fingerprint"]
    galleries = {"FR": synthetic.make_gallery(GALLERY, dim=DIM, seed=21, prefix="FR"),
                 "NL": synthetic.make_gallery(GALLERY, dim=DIM, seed=22, prefix="NL")}
    for n, g in galleries.items():
        # NL's list uses CRLF line ends, as written on Windows desks.
        tpl, refs = write_gallery(root, g, "\r\n" if n == "NL" else "\n")
        assert ok_json("enroll", dirs[n], "--templates", tpl, "--refs", refs) == {
            "format": "pprm.enroll/1", "ok": True, "state": n, "enrolled": GALLERY, "total": GALLERY}
    return World(root, dirs, cards, infos, galleries)
