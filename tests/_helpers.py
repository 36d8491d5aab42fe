"""Plain helpers shared by the protocol, node and _fs tests.

They are functions, not fixtures, so that each test module can decide its
own fixture scope (a module-wide network for read-mostly flows, fresh states
where a test mutates them). Everything secret in here is derived from fixed
labels, so failures reproduce.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from pprm import synthetic
from pprm.cli.main import main
from pprm.crypto.identity import Identity, PublicIdentity
from pprm.matching.decide import SealedDecider
from pprm.matching.gallery import EncryptedGallery
from pprm.matching.owner import GalleryOwner
from pprm.matching.sealed import SealedMatcher
from pprm.matching.templates import normalise_probe
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.state import State
from pprm.protocol.envelope import Header, new_id, seal_envelope
from pprm.protocol.messages import FollowUpBody

__all__ = [
    "INSECURE",
    "MARGIN",
    "Node",
    "PARAMS_HEX",
    "build_network",
    "craft",
    "craft_followup",
    "fixed_identity",
    "header",
    "leak_forms",
    "lookup_for",
    "new_state",
    "occurs_in",
    "plaintext_hits",
    "resolve_all",
    "snapshot",
    "windows",
]

# The fast test-only parameter set (512 templates per block).
INSECURE = "INSECURE-sealed-n1024"
# Scores closer than this to the threshold are not guaranteed to decide
# exactly (DESIGN.md section 4: delta = 1e-3); test data must avoid them.
MARGIN = 1e-3


def fixed_identity(name: str, label: str = "") -> Identity:
    """An identity whose keys are derived from fixed labels (reproducible).

    Args:
        name: state code.
        label: extra label, to make two identities with the same name.

    Returns:
        The identity.
    """
    seed = hashlib.sha256(f"pprm-test/{name}/{label}/sign".encode()).digest()
    box = hashlib.sha256(f"pprm-test/{name}/{label}/box".encode()).digest()
    return Identity(name, seed, box)


def lookup_for(*identities: PublicIdentity) -> Callable[[bytes], PublicIdentity | None]:
    """A roster lookup (fingerprint -> identity) over the given identities."""
    table = {p.fingerprint: p for p in identities}
    return table.get


# A stand-in parameter digest for envelope tests that need no real set.
PARAMS_HEX = hashlib.sha256(b"pprm-test/params").hexdigest()


def header(**overrides: object) -> Header:
    """A valid query header from DE to FR, created at t=1_700_000_000, 1 h lifetime.

    Args:
        **overrides: Header fields to replace.

    Returns:
        The header.
    """
    fields: dict[str, object] = {
        "type": "query", "sender": "DE", "recipient": "FR", "id": "0" * 31 + "1",
        "created": 1_700_000_000, "expires": 1_700_003_600, "params": PARAMS_HEX,
        "profile": "sealed", "in_reply_to": "",
    }
    fields.update(overrides)
    return Header(**fields)  # type: ignore[arg-type]


def snapshot(directory: str) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included) with its bytes and mode.

    Returns:
        Relative path -> mode byte string + content, so that a changed
        permission counts as a change too.
    """
    out: dict[str, bytes] = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for d in dirs:
            rel = os.path.relpath(os.path.join(root, d), directory)
            out[rel + "/"] = oct(os.stat(os.path.join(root, d)).st_mode).encode()
        for f in sorted(files):
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = oct(os.stat(p).st_mode).encode() + b"|" + fh.read()
    return out


def leak_forms(secret: bytes) -> list[bytes]:
    """Encodings under which ``secret`` could leak into a text or binary file.

    Raw bytes, hex (both cases), and standard / URL-safe base64 at each of the
    three byte alignments (so a secret embedded in a longer base64 string is
    found too), without padding.
    """
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for shift in range(3):
        part = secret[shift:]
        usable = len(part) - len(part) % 3
        if usable < 12:
            continue
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            forms.append(enc(part[:usable]))
    return forms


def windows(blob: bytes, width: int, stride: int, skip: int = 0) -> list[bytes]:
    """Slices of ``blob`` of ``width`` bytes every ``stride`` bytes from ``skip``."""
    return [blob[i:i + width] for i in range(skip, len(blob) - width + 1, stride)]


def occurs_in(needles: Iterable[bytes], haystacks: dict[str, bytes]) -> list[str]:
    """Names of haystacks that contain any of the needles."""
    needles = list(needles)
    return [name for name, hay in haystacks.items() if any(n in hay for n in needles)]


def new_state(directory: str, name: str, **kwargs: object) -> State:
    """A fresh state on the fast insecure parameter set."""
    return State.init(directory, name, params=INSECURE, allow_insecure=True, **kwargs)  # type: ignore[arg-type]


@dataclass
class Node:
    """A state of a test network and the synthetic gallery it enrolled."""

    state: State
    gallery: synthetic.SyntheticGallery

    @property
    def name(self) -> str:
        """The state code."""
        return self.state.config.name


def build_network(root: str, names: Iterable[str], *, n: int = 600, seed: int = 0,
                  trust: bool = True, **kwargs: object) -> dict[str, Node]:
    """States that (optionally) all trust each other, each with its own gallery.

    Args:
        root: parent directory; each state lives in ``root/<name>``.
        names: state codes.
        n: templates per gallery (0 for an empty gallery).
        seed: base seed; the i-th state uses ``seed + i``.
        trust: make every state trust every other one.
        **kwargs: passed to :meth:`State.init`.

    Returns:
        Name -> node.
    """
    nodes: dict[str, Node] = {}
    for i, name in enumerate(names):
        st = new_state(os.path.join(root, name), name, **kwargs)
        gal = synthetic.make_gallery(n, dim=st.config.dim, seed=seed + i, prefix=name)
        if n:
            KeyService(st).enroll(gal.templates, gal.references)
        nodes[name] = Node(st, gal)
    if trust:
        for a in nodes.values():
            for b in nodes.values():
                if a is not b:
                    a.state.trust(b.state.card_bytes)
    return nodes


def plaintext_hits(templates: np.ndarray, references: list[str], probe: np.ndarray,
                   threshold: float) -> set[str]:
    """References whose plaintext cosine score clears ``threshold``.

    Raises:
        AssertionError: some score lies within the decision margin of the
            threshold, where the encrypted decision is not guaranteed to be
            exact (choose other test data then).
    """
    p = np.asarray(probe, dtype=np.float64)
    p = p / np.linalg.norm(p)
    t = np.asarray(templates, dtype=np.float64)
    scores = (t / np.linalg.norm(t, axis=1, keepdims=True)) @ p
    close = np.abs(scores - threshold) < 2 * MARGIN
    assert not close.any(), "test data has a score at the threshold; pick another seed"
    return {references[i] for i in np.flatnonzero(scores >= threshold)}


def craft(sender: State, to: str, kind: str, body: bytes, *, in_reply_to: str = "",
          now: float | None = None, lifetime: int = 3600, params: str | None = None,
          msg_id: str | None = None) -> bytes:
    """A message of any type, signed by ``sender`` and boxed to peer ``to``.

    This is how a (trusted but misbehaving) peer can build messages the
    library's own roles would never produce.
    """
    peer = sender.peer(to)
    t = int(time.time() if now is None else now)
    ident = sender.identity()
    h = Header(kind, sender.config.name, to, msg_id or new_id(), t, t + lifetime,
               params or peer.params_digest, "sealed", in_reply_to)
    return seal_envelope(ident, h, ident.box_to(peer.identity, body))


def craft_followup(sender: State, to: str, query_id: str, token: str, now: float | None = None) -> bytes:
    """A follow-up that skips the requester's own check that the token is in the answer."""
    return craft(sender, to, "followup", FollowUpBody(query_id, token).to_bytes(),
                 in_reply_to=query_id, now=now)


def resolve_all(requester: State, responder_keys: KeyService, answer: bytes,
                tokens: Iterable[str]) -> list[str]:
    """Follow up every token and resolve it at the responder.

    Returns:
        The references, in token order.
    """
    req = Requester(requester)
    refs = []
    for tok in tokens:
        res = responder_keys.resolve(req.follow_up(answer, tok))
        assert res.requester == requester.config.name
        refs.append(res.reference)
    return refs


@dataclasses.dataclass
class ScoredWorld:
    """A state whose gallery scores near chosen thresholds, with the plaintext kept for checking."""

    state: State
    secret_key: seal.SecretKey
    gallery: EncryptedGallery
    owner: GalleryOwner
    probes: np.ndarray  # (m, dim) float32 unit rows, one per threshold
    rows: dict[int, np.ndarray]  # record id -> float32 unit row as enrolled
    dim: int

    def scores(self, probe: np.ndarray) -> dict[int, float]:
        p = normalise_probe(probe, self.dim).astype(np.float64)
        return {rid: float(row.astype(np.float64) @ p) for rid, row in self.rows.items()}

    def matcher(self) -> SealedMatcher:
        return self.state.matcher(self.gallery)

    def decider(self) -> SealedDecider:
        return SealedDecider(self.state.ctx, self.secret_key, self.gallery)

    def half_of(self, rid: int) -> int:
        """Complex packing: 0 for the A half (real parts), 1 for the B half (imaginary parts)."""
        _b, pos = self.gallery.index.locate(rid)
        return pos // self.state.ctx.slots


# -- the CLI, in process ---------------------------------------------------

@dataclass
class Result:
    """Exit code and captured output of one ``pprm`` command."""

    code: int
    out: str
    err: str


def cli(*argv: object) -> Result:
    """Run ``main`` in-process with captured stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


def ok(*argv: object) -> Result:
    """Run a command that must succeed."""
    r = cli(*argv)
    assert r.code == 0, r
    return r


def ok_json(*argv: object) -> Any:
    """Run a command that must succeed with ``--json``, and parse its output."""
    return json.loads(ok(*argv, "--json").out)
