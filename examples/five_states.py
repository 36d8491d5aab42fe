"""Five states search each other's encrypted face galleries, through the Python API.

Each state (DE, FR, NL, HU, AT) enrols a synthetic gallery and trusts the
other four. Every state then searches all four peers for a person enrolled in
exactly one of them (a planted mate), and DE also searches for a person
enrolled nowhere (an impostor). A requester learns only hit / no hit and
opaque candidate tokens; in step two it follows a token up and the answering
state resolves it to a reference, logging the release.

What each requester learned is printed beside the planted truth; the script
exits with status 1 if any answer disagrees with it.

Run::

    python examples/five_states.py                 # production parameters
    python examples/five_states.py --gallery 300 --params INSECURE-sealed-n1024   # fast, tests only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from pprm import KeyService, Requester, Responder, State
from pprm.crypto.params import DEFAULT_PARAMS
from pprm.synthetic import SyntheticGallery, impostor_probe, make_gallery, mate_probe

STATES = ("DE", "FR", "NL", "HU", "AT")
THRESHOLD = 0.4


def truth(gallery: SyntheticGallery, probe: np.ndarray) -> list[str]:
    """References a plaintext search of ``gallery`` would return (the ground truth)."""
    scores = gallery.templates.astype(np.float64) @ probe.astype(np.float64)
    return [gallery.references[i] for i in np.flatnonzero(scores >= THRESHOLD)]


def search(states: dict[str, State], galleries: dict[str, SyntheticGallery], requester: str,
           probe: np.ndarray, case: str) -> int:
    """``requester`` asks every peer about ``probe``; prints each answer beside the truth.

    Returns:
        The number of answers that disagree with the plaintext truth.
    """
    asking = Requester(states[requester])
    wrong = 0
    for peer in STATES:
        if peer == requester:
            continue
        # Step one: a signed query, answered with hit / no hit and opaque tokens.
        query = asking.query(peer, probe, case=case, purpose="serious-crime")
        answer = Responder(states[peer]).answer(query)
        opened = asking.open(answer)
        # Step two: follow every candidate up; the peer resolves it and logs that.
        resolved = []
        for token in opened.candidates:
            follow_up = asking.follow_up(answer, token)
            resolved.append(KeyService(states[peer]).resolve(follow_up).reference)

        expected = truth(galleries[peer], probe)
        ok = opened.hit == bool(expected) and sorted(resolved) == sorted(expected)
        wrong += not ok
        count = len(opened.candidates)
        learned = f"hit, {count} candidate{'s' * (count > 1)} -> {', '.join(resolved)}" if opened.hit else "no hit"
        print(f"  {peer}: {learned:<44} truth: {', '.join(expected) or 'not enrolled':<12}"
              f"  {'ok' if ok else 'DISAGREES'}")
    return wrong


def main(argv: list[str] | None = None) -> int:
    """Run the five-state scenario; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=1500, help="templates per state (default 1500)")
    parser.add_argument("--params", default=DEFAULT_PARAMS,
                        help="parameter set (INSECURE-* sets are for tests only)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the synthetic data")
    args = parser.parse_args(argv)
    insecure = args.params.startswith("INSECURE")
    if insecure:
        print(f"warning: {args.params} offers no security; use it for tests only")

    rng = np.random.default_rng(args.seed)
    print(f"Five states, {args.gallery} synthetic templates each, {args.params}, threshold {THRESHOLD}")
    with tempfile.TemporaryDirectory(prefix="pprm-five-states-") as root:
        # Each state is a directory with its own keys, roster, gallery and audit log.
        states, galleries = {}, {}
        for i, code in enumerate(STATES):
            states[code] = State.init(f"{root}/{code}", code, threshold=THRESHOLD, params=args.params,
                                      allow_insecure=insecure)
            galleries[code] = make_gallery(args.gallery, seed=args.seed + i, prefix=code)
            t0 = time.perf_counter()
            KeyService(states[code]).enroll(galleries[code].templates, galleries[code].references)
            print(f"  {code}: enrolled {args.gallery} encrypted templates in {time.perf_counter() - t0:.1f} s")

        # Trust is explicit: every state adds the others' public cards to its roster.
        for code in STATES:
            for other in STATES:
                if other != code:
                    states[code].trust(states[other].card_bytes)
        print(f"  every state trusts the other four (roster of DE: {', '.join(states['DE'].roster())})")

        wrong = 0
        for i, requester in enumerate(STATES):
            owner = STATES[(i + 1) % len(STATES)]
            index = int(rng.integers(args.gallery))
            planted = galleries[owner].references[index]
            print(f"\n{requester} searches all peers for a person enrolled in {owner} (planted: {planted})")
            probe = mate_probe(galleries[owner], index, seed=i)
            wrong += search(states, galleries, requester, probe, case=f"{requester}-CASE-{i + 1}")

        print("\nDE searches all peers for a person enrolled nowhere")
        wrong += search(states, galleries, "DE", impostor_probe(512, seed=args.seed), case="DE-CASE-99")

        # Every query, release and resolution went into hash-chained audit logs.
        print("\naudit logs: " + ", ".join(f"{code} {states[code].audit.verify()} entries" for code in STATES)
              + ", all chains verify")

    answers = (len(STATES) + 1) * (len(STATES) - 1)
    if wrong:
        print(f"\n{wrong} of {answers} answers DISAGREE with the plaintext truth")
        return 1
    print(f"\nall {answers} answers agree with the plaintext truth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
