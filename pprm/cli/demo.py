"""``pprm demo``: several states end to end, checked against plaintext truth.

Each state gets its own encrypted gallery of synthetic templates
(:mod:`pprm.synthetic`) with planted mates:

* cross-border duplicates: identities enrolled at one state are also
  enrolled, from a fresh sample and under a local reference, at the next;
* a repeat offender: one identity of the first state is enrolled ``k + 3``
  times, so a search for it has more true matches than the cap ``k``.

Every state then queries every other state three times, through the public
Python API exactly as two deployments would (signed query, encrypted masked
matching, capped candidates, follow-up, resolution): in the sealed profile
once with a fresh sample of an identity enrolled there and once with an
impostor, and in the blind profile (the probe encrypted under the
requester's own key) once more with the mate. Each outcome is compared
with the plaintext truth: the references whose exact float64 score between
the normalised float32 probe and the normalised float32 template (what was
encrypted) is at least the threshold. A blind follow-up carries the probe,
and the responder refuses one whose record it does not clear the threshold
against (a candidate within the decision margin can be one): the signed
refusal goes back to the requester, and the candidate counts as not learned.

Scores appear nowhere in the output; only references, counts and verdicts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.errors import FollowUpRefusedError, NotAHitError, ParameterError
from pprm.matching.templates import normalise_probe, normalise_templates
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.synthetic import SyntheticGallery, impostor_probe, make_gallery, mate_probe, samples_of

__all__ = ["DEMO_STATES", "DEMO_K", "DEMO_THRESHOLD", "DEMO_DIM", "MIN_GALLERY", "run_demo", "judge",
           "format_report"]

# Prüm participants; the demo takes the first --states of them.
DEMO_STATES = ("DE", "FR", "NL", "HU", "AT", "PL", "IT", "ES", "BE", "CZ", "SE", "PT")
DEMO_K = 10
DEMO_THRESHOLD = 0.4
DEMO_DIM = 512
# Gallery rows 1..3 carry the planted duplicates and the repeat offender;
# plain mates are drawn from row 4 on, so a handful of rows must remain.
_PLAIN_START = 4
MIN_GALLERY = 16

StageProgress = Callable[[str, int, int], None]
Person = tuple[int, int]  # (state that drew the identity, row in that state's synthetic gallery)


@dataclass
class _Enrolment:
    """What one state enrols, with the identity behind every record."""

    code: str
    references: list[str]
    templates: np.ndarray
    identities: list[Person]


def judge(truth: Sequence[str], dont_care: Sequence[str], learned: Sequence[str], k: int) -> str | None:
    """Check what a requester learned against the plaintext truth.

    The key service releases every reference it decides is a hit when there
    are at most ``k``, otherwise ``k`` of them. References within the
    decision margin of the threshold may go either way.

    Args:
        truth: references scoring at least the threshold.
        dont_care: references within the decision margin (either verdict is fine).
        learned: references the requester resolved from the released tokens.
        k: the responder's candidate cap.

    Returns:
        None if consistent, else a one-line reason.
    """
    got = set(learned)
    possible = set(truth) | set(dont_care)
    sure = set(truth) - set(dont_care)
    if len(got) != len(learned):
        return "a reference was released twice"
    if len(got) > k:
        return f"{len(got)} candidates released, cap is {k}"
    extra = got - possible
    if extra:
        return f"released {len(extra)} reference(s) below the threshold"
    if len(got) < k and not sure <= got:
        return f"missed {len(sure - got)} reference(s) above the threshold"
    return None


def _plan(codes: Sequence[str], n: int, seed: int, dim: int, k: int) -> tuple[list[SyntheticGallery],
                                                                                  list[_Enrolment]]:
    """Synthetic galleries plus the planted duplicates and repeat offender."""
    base = [make_gallery(n, dim=dim, seed=seed * 1000 + i, prefix=code) for i, code in enumerate(codes)]
    plans = [_Enrolment(code, list(g.references), g.templates.copy(), [(i, j) for j in range(n)])
             for i, (code, g) in enumerate(zip(codes, base, strict=True))]

    def add(target: int, ident: Person, samples: np.ndarray) -> None:
        p = plans[target]
        refs = [f"{p.code}-{len(p.references) + j:07d}" for j in range(samples.shape[0])]
        p.references.extend(refs)
        p.templates = np.concatenate([p.templates, samples])
        p.identities.extend([ident] * samples.shape[0])

    for origin in range(len(codes)):
        target = (origin + 1) % len(codes)
        for row in (1, 2):
            rng = np.random.default_rng([seed, 1, origin, row])
            add(target, (origin, row), samples_of(base[origin].centres[row:row + 1], rng))
    # The repeat offender: more records than the cap k at the first state.
    centre = base[0].centres[3:4]
    add(0, (0, 3), samples_of(np.repeat(centre, k + 2, axis=0), np.random.default_rng([seed, 2])))
    return base, plans


def _mate_identity(pair: int, requester: int, responder: int, n_states: int, n: int) -> Person:
    """Which identity enrolled at ``responder`` the ``pair``-th mate probe shows."""
    if responder == 0 and requester == 1:
        return (0, 3)  # the repeat offender: truth exceeds k
    kind = pair % 3
    if kind == 1:
        return (responder, 1)  # drawn here, also enrolled at the next state
    if kind == 2:
        return ((responder - 1) % n_states, 2)  # drawn at the previous state, duplicated here
    return (responder, _PLAIN_START + pair % (n - _PLAIN_START))


@contextlib.contextmanager
def _workdir(directory: str | None) -> Iterator[str]:
    if directory is not None:
        yield os.path.abspath(directory)
        return
    with tempfile.TemporaryDirectory(prefix="pprm-demo-") as tmp:
        yield tmp


def run_demo(directory: str | None = None, *, states: int = 3, gallery: int = 5000, seed: int = 0,
             params: str = param_sets.DEFAULT_PARAMS, progress: StageProgress | None = None) -> dict[str, Any]:
    """Run the multi-state demo and compare every outcome with plaintext truth.

    Args:
        directory: where the state directories go (``DIR/DE``, ...); each must
            not exist or be empty. A temporary directory, removed afterwards,
            when None.
        states: how many states take part (2 to 12).
        gallery: synthetic templates per state before the planted extras.
        seed: seed of every synthetic template and probe.
        params: parameter set of all demo states; an ``INSECURE*`` set is
            allowed here because the demo states are throwaway.
        progress: called with ``(stage, done, total)`` during long steps.

    Returns:
        A JSON-ready report: settings, the states, one entry per query
        (``truth``, ``dont_care``, ``learned`` references, ``refused``
        follow-ups and a verdict) and a summary; ``ok`` is True when every
        query agreed.

    Raises:
        ParameterError: unknown parameter set or out-of-range settings.
        StateError: a state directory exists and is not empty.
    """
    if not 2 <= states <= len(DEMO_STATES):
        raise ParameterError(f"the demo runs with 2 to {len(DEMO_STATES)} states")
    if gallery < MIN_GALLERY:
        raise ParameterError(f"the demo needs at least {MIN_GALLERY} templates per gallery")
    if seed < 0:
        raise ParameterError("seed must not be negative")
    pset = param_sets.get(params, allow_insecure=True)
    # Throwaway states on a test-only sealed set get the test-only blind set too.
    bset = blind_param_sets.get("INSECURE-blind-n1024-complex-v3" if pset.insecure
                                else blind_param_sets.DEFAULT_BLIND_PARAMS, allow_insecure=True)
    started = time.monotonic()
    codes = DEMO_STATES[:states]
    base, plans = _plan(codes, gallery, seed, DEMO_DIM, DEMO_K)
    where: dict[Person, list[tuple[int, str]]] = {}
    for s, p in enumerate(plans):
        for ref, ident in zip(p.references, p.identities, strict=True):
            where.setdefault(ident, []).append((s, ref))

    with _workdir(directory) as root:
        nodes = [State.init(os.path.join(root, code), code, threshold=DEMO_THRESHOLD, params=pset.name,
                            k=DEMO_K, dim=DEMO_DIM, allow_insecure=pset.insecure, blind_params=bset.name)
                 for code in codes]
        for a in nodes:
            for b in nodes:
                if a is not b:
                    a.trust(b.card_bytes)
        requesters = [Requester(st) for st in nodes]
        responders = [Responder(st) for st in nodes]
        for resp, plan in zip(responders, plans, strict=True):
            label = f"enrolling {plan.code}"
            cb = None if progress is None else functools.partial(progress, label)
            resp.key_service.enroll(plan.templates, plan.references, progress=cb)
        # Plaintext truth uses exactly what was encrypted: the normalised float32 rows.
        normalised = [normalise_templates(p.templates, DEMO_DIM).astype(np.float64) for p in plans]
        margin = pset.decision_margin

        pairs = [(r, s) for r in range(states) for s in range(states) if r != s]
        queries: list[dict[str, Any]] = []
        for pair, (r, s) in enumerate(pairs):
            mate = _mate_identity(pair, r, s, states, gallery)
            mate_sample = mate_probe(base[mate[0]], mate[1], seed * 100_000 + pair)
            probes: list[tuple[str, str, np.ndarray, Person | None]] = [
                ("mate", "sealed", mate_sample, mate),
                ("impostor", "sealed", impostor_probe(DEMO_DIM, seed * 100_000 + pair), None),
                ("mate", "blind", mate_sample, mate)]
            for kind, profile, probe, who in probes:
                places = where[who] if who is not None else []
                planted = sorted(ref for at, ref in places if at == s)
                elsewhere = sorted({codes[at] for at, _ in places if at != s})
                note = ""
                if len(planted) > 1:
                    note = f"enrolled {len(planted)} times"
                elif elsewhere:
                    note = f"also enrolled at {', '.join(elsewhere)}"
                scores = normalised[s] @ normalise_probe(probe, DEMO_DIM).astype(np.float64)
                refs = plans[s].references
                truth = sorted(refs[i] for i in np.flatnonzero(scores >= DEMO_THRESHOLD))
                dont_care = sorted(refs[i] for i in np.flatnonzero(np.abs(scores - DEMO_THRESHOLD) < margin))

                req, resp = requesters[r], responders[s]
                case, purpose = f"DEMO-{pair:04d}-{kind}-{profile}", "serious-crime"
                sent = req.prepare(codes[s], probe, case, purpose, profile=profile)
                answer = resp.answer(sent.query, announcements=sent.announcements)
                opened = req.open(answer)
                learned, refused = _follow_up_all(req, resp, answer, opened.candidates)
                reason = judge(truth, dont_care, learned, DEMO_K)
                if reason is None and (opened.hit != bool(opened.candidates)
                                       or len(opened.candidates) != len(learned) + refused):
                    reason = "hit flag disagrees with the candidates"
                queries.append({
                    "requester": codes[r], "responder": codes[s], "probe": kind, "profile": profile,
                    "planted": planted,
                    "note": note, "truth": truth, "dont_care": dont_care, "hit": opened.hit,
                    "candidates": len(opened.candidates), "learned": sorted(learned), "refused": refused,
                    "ok": reason is None, "reason": reason,
                })
                if progress is not None:
                    progress("querying", len(queries), len(probes) * len(pairs))
        state_rows = [{"name": st.config.name, "records": len(st.gallery()),
                       "fingerprint": st.card.identity.fingerprint.hex()} for st in nodes]

    mismatches = sum(not q["ok"] for q in queries)
    return {
        "params": pset.name, "blind_params": bset.name, "threshold": DEMO_THRESHOLD, "k": DEMO_K, "dim": DEMO_DIM,
        "decision_margin": margin, "seed": seed, "gallery": gallery,
        "directory": None if directory is None else os.path.abspath(directory),
        "states": state_rows, "queries": queries,
        "summary": {"queries": len(queries), "ok": len(queries) - mismatches, "mismatches": mismatches,
                    "dont_care": sum(len(q["dont_care"]) for q in queries),
                    "elapsed_s": round(time.monotonic() - started, 2)},
        "ok": mismatches == 0,
    }


def _follow_up_all(req: Requester, resp: Responder, answer: bytes,
                   candidates: Sequence[str]) -> tuple[list[str], int]:
    """Follow up every candidate; returns the resolved references and how many follow-ups were refused.

    A refused (blind, not a hit) follow-up's signed refusal is handed back to
    the requester, which records it, as a deployment would.
    """
    learned: list[str] = []
    refused = 0
    for tok in candidates:
        try:
            learned.append(resp.key_service.resolve(req.follow_up(answer, tok)).reference)
        except NotAHitError as exc:
            refused += 1
            with contextlib.suppress(FollowUpRefusedError):
                req.open(exc.refusal)
    return learned, refused


def _refs_cell(refs: Sequence[str]) -> str:
    if not refs:
        return "-"
    if len(refs) <= 2:
        return ", ".join(refs)
    return f"{len(refs)} refs"


def _learned_cell(q: dict[str, Any]) -> str:
    learned, truth = q["learned"], q["truth"]
    if learned and len(learned) < len(truth) and set(learned) <= set(truth):
        return f"{len(learned)} of {len(truth)} (cap)"
    return _refs_cell(learned)


def format_report(result: dict[str, Any]) -> str:
    """Render :func:`run_demo`'s report as a readable table.

    Args:
        result: the report.

    Returns:
        Multi-line text (no trailing newline).
    """
    lines = [f"pprm demo: {len(result['states'])} states, params {result['params']} (sealed) and "
             f"{result['blind_params']} (blind), threshold {result['threshold']}, k {result['k']}, "
             f"seed {result['seed']}"]
    for st in result["states"]:
        lines.append(f"  {st['name']:<4} {st['records']:>7} records   fingerprint {st['fingerprint']}")
    lines.append("")
    header = ("requester", "responder", "profile", "probe", "planted", "truth", "learned", "result")
    rows = [header]
    for q in result["queries"]:
        planted = _refs_cell(q["planted"])
        if q["note"]:
            planted = f"{planted} ({q['note']})"
        verdict = "OK" if q["ok"] else f"MISMATCH: {q['reason']}"
        rows.append((q["requester"], q["responder"], q["profile"], q["probe"], planted, _refs_cell(q["truth"]),
                     _learned_cell(q), verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    s = result["summary"]
    lines.append("")
    lines.append(f"{s['queries']} queries: {s['ok']} OK, {s['mismatches']} MISMATCH ({s['elapsed_s']} s)")
    margin = result["decision_margin"]
    if s["dont_care"]:
        lines.append(f"{s['dont_care']} decision(s) within {margin:g} of the threshold were treated as don't care")
    else:
        lines.append(f"no decision was within {margin:g} of the threshold (no don't-care cases)")
    if result["directory"]:
        lines.append(f"state directories kept under {result['directory']}")
    return "\n".join(lines)
