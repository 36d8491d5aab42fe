"""The one helper module of the test suite: plain functions and small classes.

They are functions, not fixtures, so that each test module can decide its own
fixture scope. Everything secret in here is derived from fixed labels, so
failures reproduce. Sections:

* the names of the test parameter sets (``INSECURE_SEALED``,
  ``INSECURE_BLIND``, ...: one name each, used everywhere);
* states (:func:`new_state`), networks and crafted messages for the
  protocol, node and CLI tests;
* galleries with prescribed scores (:func:`rows_with_scores`,
  :class:`ScoredWorld`) for the fidelity tests;
* the CLI, in process (:func:`cli`, :func:`ok`, :func:`ok_json`);
* two statistics the privacy tests need (numpy only, no scipy);
* exact noise measurement of blind-profile ciphertexts (integer CRT);
* running state services and routers on loopback for the network tests.

Fixtures built from these live in ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tenseal.sealapi as seal
import uvicorn
import zstandard

from pprm import synthetic
from pprm.cli.main import main
from pprm.crypto.context import BlindContext
from pprm.crypto.encoding import coefficients_to_residues, encode_coefficients
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
    "INSECURE_BLIND",
    "INSECURE_SEALED",
    "INSECURE_SEALED_COMPLEX",
    "MARGIN",
    "Node",
    "PARAMS_HEX",
    "PROD_BLIND",
    "Proc",
    "Result",
    "ScoredWorld",
    "build_network",
    "centered_coefficients",
    "cli",
    "craft",
    "craft_followup",
    "dead_url",
    "fixed_identity",
    "header",
    "ks_2samp",
    "leak_forms",
    "lookup_for",
    "masked_noise_bits",
    "load_switching_keys",
    "new_state",
    "noise_bits",
    "occurs_in",
    "ok",
    "ok_json",
    "orthonormal_probes",
    "plaintext_hits",
    "plaintext_residues",
    "resolve_all",
    "route",
    "rows_with_scores",
    "serve",
    "snapshot",
    "spawn",
    "spearman",
    "thread_server",
    "wait_for",
    "windows",
]

# ---- helpers ------------------------------------------------------------

# The fast test-only parameter sets of the two profiles (N=1024; never
# accepted without allow_insecure=True).
INSECURE_SEALED = "INSECURE-sealed-n1024"  # 512 templates per block
INSECURE_SEALED_COMPLEX = "INSECURE-sealed-n1024-complex"  # 1024 templates per block
# The default's twin (two templates per slot, 1024 per block), which every
# blind test uses; the matching tests run on the real-packing set as well.
INSECURE_BLIND = "INSECURE-blind-n1024-complex-v3"
INSECURE_BLIND_REAL = "INSECURE-blind-n1024-v2"  # 512 templates per block
# The blind production set, for the tests that measure noise and fidelity
# where it matters (pinned by name, not DEFAULT_BLIND_PARAMS: the figures in
# those tests belong to this set).
PROD_BLIND = "pprm-blind-n16384-complex-v3"
PROD_BLIND_REAL = "pprm-blind-n16384-v2"
# Scores closer than this to the threshold are not guaranteed to decide
# exactly (docs/DESIGN.md section 4: delta = 1e-3); test data must avoid them.
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
            if stat.S_ISSOCK(os.lstat(p).st_mode):
                continue  # a key service's listening socket: no content
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


def new_state(directory: str | os.PathLike[str], name: str, *, params: str = INSECURE_SEALED,
              allow_insecure: bool = True, **kwargs: Any) -> State:
    """A fresh state in ``directory`` via :meth:`State.init`, on the fast insecure sealed set.

    Args:
        directory: the state directory (must not exist, or be empty).
        name: the state code.
        params: sealed parameter set (default :data:`INSECURE_SEALED`).
        allow_insecure: passed on (default True, so the insecure sets load).
        **kwargs: other :meth:`State.init` keywords (threshold, k, dim,
            blind_params, ...).

    Returns:
        The opened state.
    """
    return State.init(os.fspath(directory), name, params=params, allow_insecure=allow_insecure, **kwargs)


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
                  trust: bool = True, **kwargs: Any) -> dict[str, Node]:
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


def orthonormal_probes(m: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` random orthonormal rows of dimension ``dim`` (float64)."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, m)))
    return np.ascontiguousarray(q.T)


def rows_with_scores(probes: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit rows ``g_i`` with ``g_i . p_j = scores[i, j]`` for orthonormal probes ``p_j``.

    ``g_i = sum_j a_ij p_j + sqrt(1 - sum_j a_ij^2) u_i`` with ``u_i`` a random
    unit vector orthogonal to every probe, so that tests can put scores
    exactly where they want them (close to the threshold, or safely away).

    Args:
        probes: ``(m, d)`` orthonormal rows.
        scores: ``(n, m)`` prescribed scores, with row sums of squares < 1.
        rng: randomness for the orthogonal parts.

    Returns:
        ``(n, d)`` float64 unit rows.
    """
    p = np.asarray(probes, dtype=np.float64)
    a = np.asarray(scores, dtype=np.float64)
    assert np.allclose(p @ p.T, np.eye(p.shape[0]), atol=1e-12), "probes must be orthonormal"
    rest = 1.0 - (a * a).sum(axis=1)
    assert (rest > 0).all(), "prescribed scores leave no room for a unit row"
    u = rng.standard_normal((a.shape[0], p.shape[1]))
    u -= (u @ p.T) @ p
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return a @ p + np.sqrt(rest)[:, None] * u


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


# ---- stats ------------------------------------------------------------

def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    # Average the ranks of ties (rare for continuous data, exact when present).
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        sums = np.bincount(inverse, weights=ranks)
        ranks = sums[inverse] / counts[inverse]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks)."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    return float(np.corrcoef(rx, ry)[0, 1])


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value.

    The p-value uses the Kolmogorov distribution with Stephens' small-sample
    correction, as in Numerical Recipes' ``kstwo``; accurate for the
    thousands of samples used here.
    """
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    allv = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, allv, side="right") / a.size
    cdf_b = np.searchsorted(b, allv, side="right") / b.size
    d = float(np.abs(cdf_a - cdf_b).max())
    ne = a.size * b.size / (a.size + b.size)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


# ---- blind_noise ------------------------------------------------------------

def plaintext_residues(ctx: BlindContext, pt: seal.Plaintext, primes: int) -> np.ndarray:
    fd, path = tempfile.mkstemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    try:
        pt.save(path)
        with open(path, "rb") as fh:
            raw = fh.read()
    finally:
        os.unlink(path)
    body = zstandard.ZstdDecompressor().decompress(raw[16:], max_output_size=1 << 28) if raw[5] == 2 else raw[16:]
    off = 32 + 8 + 8 + 16 + 8
    return np.frombuffer(body, dtype="<u8", offset=off).astype(np.uint64).reshape(primes, ctx.n)


def centered_coefficients(ctx: BlindContext, ntt_residues: np.ndarray) -> list[int]:
    """CRT-lift NTT residues ``[L, N]`` to centered integer coefficients."""
    primes = ntt_residues.shape[0]
    if not ntt_residues.any():
        return [0] * ctx.n
    ct = ctx.from_residues(np.stack([ntt_residues, ntt_residues]), 1.0)
    ctx.evaluator.transform_from_ntt_inplace(ct)
    from pprm.crypto import seal_stream

    _meta, res = seal_stream.parse(ctx.save_bytes(ct))
    coeffs = res[0]
    moduli = ctx.moduli[:primes]
    big_q = 1
    for q in moduli:
        big_q *= q
    out = []
    parts = [(big_q // q) * pow(big_q // q, -1, q) for q in moduli]
    cols = [coeffs[j].tolist() for j in range(primes)]
    for k in range(ctx.n):
        v = sum(cols[j][k] * parts[j] for j in range(primes)) % big_q
        out.append(v - big_q if v > big_q // 2 else v)
    return out


def noise_bits(ctx: BlindContext, secret_key: seal.SecretKey, ct: seal.Ciphertext,
               values: np.ndarray, scale_bits: int) -> float:
    """log2 of the largest noise coefficient of ``ct`` against exact ``values`` at ``2**scale_bits``."""
    primes = ct.coeff_modulus_size()
    pt = seal.Plaintext()
    seal.Decryptor(ctx.seal, secret_key).decrypt(ct, pt)
    dec = plaintext_residues(ctx, pt, primes)
    ideal = coefficients_to_residues(encode_coefficients(values, scale_bits, ctx.n)[None], ctx.moduli[:primes])
    ideal = ctx.to_ntt(ideal)[0]
    diff = np.empty_like(dec)
    for j, q in enumerate(ctx.moduli[:primes]):
        diff[j] = np.where(dec[j] >= ideal[j], dec[j] - ideal[j], dec[j] + (np.uint64(q) - ideal[j]))
    worst = max(abs(c) for c in centered_coefficients(ctx, diff))
    return math.log2(max(worst, 1))


def load_switching_keys(ctx: BlindContext, cls: type[seal.GaloisKeys] | type[seal.RelinKeys], blob: bytes,
                        ) -> seal.GaloisKeys | seal.RelinKeys:
    """Load Galois or relinearisation keys from a blob (SEAL reads only from files)."""
    fd, path = tempfile.mkstemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    try:
        with open(path, "wb") as fh:
            fh.write(blob)
        obj = cls()
        obj.load(ctx.seal, path)
    finally:
        os.unlink(path)
    return obj


def masked_noise_bits(ctx: BlindContext, secret_key: seal.SecretKey, matcher: object, probe_ct: seal.Ciphertext,
                      keys: object, scores: np.ndarray, signs: np.ndarray, tau: float,
                      r: np.ndarray) -> float:
    """Noise of block 0's masked value before the flood, against the exact ring product.

    The ideal is ``NTT(exact u*(s - tau)) * NTT(R)``: the exact encoding of the
    signed, shifted scores times the integer mask polynomial actually used,
    so what remains is the computation's own noise (encryption, the
    responder's re-randomisation, the conjugation, rotations, rounding of the
    diagonals), multiplied by the mask.
    """
    from pprm.crypto.blind_keys import EvaluationKeys
    from pprm.matching import kernel
    from pprm.matching.blind import BlindMatcher, SlotMasks

    assert isinstance(matcher, BlindMatcher) and isinstance(keys, EvaluationKeys)
    p = ctx.params
    prepared = matcher.prepare(probe_ct, keys)
    inner = kernel.plain_mac(matcher.db.diagonals[0], prepared.baby, ctx.moduli)
    score = matcher._giant_steps(inner, keys.galois)
    masked = matcher.mask(score, signs, tau, SlotMasks(r, np.zeros_like(r)), keys.galois)
    ct = ctx.from_residues(masked, float(2**p.top_scale_bits))
    pt = seal.Plaintext()
    seal.Decryptor(ctx.seal, secret_key).decrypt(ct, pt)
    dec = plaintext_residues(ctx, pt, p.data_primes)
    shifted = (signs * (scores - np.longdouble(tau))).astype(np.longdouble)

    def ntt(coeffs: np.ndarray) -> np.ndarray:
        return ctx.to_ntt(coefficients_to_residues(coeffs[None], ctx.moduli))[0]

    if p.complex_packing:
        # a*z + b*conj(z) with the exact z and the integer mask polynomials the
        # matcher used; conj(m)(X) = m(X**-1) = m_0 - sum_k m_k X**(N-k).
        from pprm.matching.blind import _real_coefficients
        h = p.slots
        zc = encode_coefficients((shifted[:h] + 1j * shifted[h:])[None], p.score_scale_bits, ctx.n)[0]
        zconj = zc.copy()
        zconj[1:] = -zc[1:][::-1]
        ua, ub, ra, rb = signs[:h], signs[h:], r[:h], r[h:]
        ab = _real_coefficients(np.stack([(ua * ra + ub * rb) / 2.0, (ua * ra - ub * rb) / 2.0]),
                                p.mask_scale_bits, ctx.n)
        zn, zcn = ntt(zc), ntt(zconj)
        ideal = kernel.plain_mac(np.stack([ntt(ab[0]), ntt(ab[1])])[None], np.stack([np.stack([zn, zn]),
                                 np.stack([zcn, zcn])]), ctx.moduli)[0, 0]
    else:
        st = ntt(encode_coefficients(shifted[None], p.score_scale_bits, ctx.n)[0])
        rr = ntt(encode_coefficients((signs * r)[None], p.mask_scale_bits, ctx.n)[0])
        ideal = kernel.plain_mac(rr[None, None], np.stack([st, st])[None], ctx.moduli)[0, 0]
    diff = np.empty_like(dec)
    for j, q in enumerate(ctx.moduli):
        diff[j] = np.where(dec[j] >= ideal[j], dec[j] - ideal[j], dec[j] + (np.uint64(q) - ideal[j]))
    worst = max(abs(c) for c in centered_coefficients(ctx, diff))
    return math.log2(max(worst, 1))


# ---- net ------------------------------------------------------------

@dataclass
class Proc:
    """A ``pprm serve`` or ``pprm route`` process and the URL it printed."""

    popen: subprocess.Popen[str]
    url: str
    args: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.popen.kill()
        self.popen.wait(10)

    def stop(self) -> tuple[int, str]:
        """SIGTERM and wait; returns (exit code, stderr)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            _, err = self.popen.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate()
        return self.popen.returncode, err


def spawn(args: list[str], timeout: float = 60.0) -> Proc:
    """Start ``pprm ARGS`` and wait for its 'listening on URL' line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "pprm.cli.main", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    assert p.stdout is not None
    line = ""
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if "listening on" in line or not line:
            break
    if "listening on" not in line:
        p.kill()
        _, err = p.communicate()
        raise RuntimeError(f"pprm {' '.join(args)} did not start: {err.strip()[-500:]}")
    return Proc(p, line.split()[-1], args)


def serve(directory: str) -> Proc:
    """``pprm serve DIR`` on a free loopback port."""
    return spawn(["serve", str(directory), "--port", "0"])


def route(peers: dict[str, str], path: str) -> Proc:
    """``pprm route`` over a peers file written to ``path``."""
    with open(path, "w") as fh:
        json.dump(peers, fh)
    return spawn(["route", "--peers", path, "--port", "0"])


@contextlib.contextmanager
def thread_server(app: object) -> Iterator[str]:
    """Serve an ASGI app from a thread on a free loopback port; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(app, log_level="error", lifespan="on", timeout_graceful_shutdown=1)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(20)
        sock.close()


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was just released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def wait_for(predicate: object, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


# ---- blind follow-ups (appended) -------------------------------------------------

__all__ += ["blind_followup_body", "craft_blind_followup"]


def blind_followup_body(query_id: str, handle: str, probe: object, *, dim: int | None = None) -> bytes:
    """The canonical bytes of a blind follow-up body, unchecked: what a misbehaving peer can put in the box.

    Args:
        query_id: the query id field.
        handle: the token field.
        probe: raw bytes for the probe field (encoded as canonical base64),
            or an array written as little-endian float32.
        dim: the dim field (default: the number of float32 values).

    Returns:
        Canonical JSON with the four fields of
        :class:`pprm.protocol.blind_messages.BlindFollowUpBody`.
    """
    from pprm.protocol import canonical

    raw = probe if isinstance(probe, bytes) else np.asarray(probe).astype("<f4").tobytes()
    return canonical.encode({"dim": len(raw) // 4 if dim is None else dim, "probe": canonical.b64(raw),
                             "query_id": query_id, "token": handle})


def craft_blind_followup(sender: State, to: str, query_id: str, handle: str, probe: object, *,
                         body: bytes | None = None, now: float | None = None) -> bytes:
    """A blind follow-up signed by ``sender`` and boxed to ``to``, skipping every check of the requester.

    Args:
        sender: the requesting state.
        to: the answering state.
        query_id: the query whose answer named (or did not name) ``handle``.
        handle: a blind handle (any string).
        probe: the probe to carry (see :func:`blind_followup_body`).
        body: the body bytes to box instead, when given.
        now: the creation time (default: now).

    Returns:
        The signed message.
    """
    t = int(time.time() if now is None else now)
    ident = sender.identity()
    h = Header("followup", sender.config.name, to, new_id(), t, t + 3600, sender.blind_ctx.params.digest,
               "blind", query_id)
    plain = blind_followup_body(query_id, handle, probe) if body is None else body
    return seal_envelope(ident, h, ident.box_to(sender.peer(to).identity, plain))
