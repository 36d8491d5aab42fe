"""Five states as HTTP services, talking through a router, each a separate process.

Each state (DE, FR, NL, HU, AT) enrols a synthetic gallery, trusts the other
four, and runs ``pprm serve`` on a free loopback port. A router
(``pprm route``) relays every message; it holds no state keys, only the
address of each service. Every state then asks all four peers at once, over
HTTP through the router, about a person enrolled in exactly one of them, and
follows the hit up (step two); the answering state resolves it and logs the
reference, which this script checks against the planted truth. AT is asked
in the blind profile (the probe stays encrypted under the asker's key).

Finally NL's service is stopped and DE asks again: NL is reported
unreachable while the others answer. Every process is then stopped with
SIGTERM and every audit log is verified.

Run::

    python examples/federation.py                 # production parameters
    python examples/federation.py --gallery 300 --params INSECURE-sealed-n1024   # fast, tests only
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pprm import KeyService, State
from pprm.crypto.blind_params import DEFAULT_BLIND_PARAMS
from pprm.crypto.params import DEFAULT_PARAMS
from pprm.net import Directory, PeerOutcome, ask, send_follow_up
from pprm.synthetic import SyntheticGallery, impostor_probe, make_gallery, mate_probe

STATES = ("DE", "FR", "NL", "HU", "AT")
BLIND_PEER = "AT"
THRESHOLD = 0.4


def start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``pprm ARGS`` as its own process; returns it and the URL it listens on."""
    proc = subprocess.Popen([sys.executable, "-m", "pprm.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"pprm {args[0]} did not start: {proc.communicate()[1].strip()[-300:]}")
    return proc, line.split()[-1]


def stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, then wait for the graceful shutdown; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    return proc.returncode


def truth(gallery: SyntheticGallery, probe: np.ndarray) -> list[str]:
    """References a plaintext search of ``gallery`` would return."""
    scores = gallery.templates.astype(np.float64) @ probe.astype(np.float64)
    return [gallery.references[i] for i in np.flatnonzero(scores >= THRESHOLD)]


def resolved_by(state: State, query_id: str) -> list[str]:
    """References the answering state resolved for ``query_id`` (from its audit log)."""
    return [e["data"]["reference"] for e in state.audit.entries()
            if e.get("event") == "resolve" and e["data"].get("query_id") == query_id]


def report(states: dict[str, State], galleries: dict[str, SyntheticGallery], requester: str,
           outcomes: list[PeerOutcome], probe: np.ndarray, directory: Directory) -> int:
    """Print one row per peer, follow hits up over HTTP, and count disagreements with the truth."""
    wrong = 0
    for o in outcomes:
        expected = truth(galleries[o.peer], probe)
        learned = ""
        if o.status == "hit":
            for cand in o.candidates:
                send_follow_up(states[requester], Path(str(o.answer_path)).read_bytes(), cand, directory)
            learned = ", ".join(resolved_by(states[o.peer], str(o.query_id)))
        ok = (o.status == "hit") == bool(expected) and o.status in ("hit", "no hit") \
            and sorted(learned.split(", ") if learned else []) == sorted(expected)
        wrong += not ok
        shown = f"hit -> {learned}" if o.status == "hit" else o.status
        print(f"  {requester} -> {o.peer}  {o.profile:<6} {o.seconds * 1000:6.0f} ms  {shown:<22}"
              f" truth: {', '.join(expected) or 'not enrolled':<12}  {'ok' if ok else 'DISAGREES'}")
    return wrong


def main(argv: list[str] | None = None) -> int:
    """Run the federation; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=1500, help="templates per state (default 1500)")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter set (INSECURE-* sets are for tests only)")
    parser.add_argument("--seed", type=int, default=2025, help="seed of the synthetic data")
    args = parser.parse_args(argv)
    insecure = args.params.startswith("INSECURE")
    blind_params = "INSECURE-blind-n1024-complex-v3" if insecure else DEFAULT_BLIND_PARAMS
    if insecure:
        print(f"warning: {args.params} offers no security; use it for tests only")
    rng = np.random.default_rng(args.seed)
    print(f"Five state services and a router on loopback, {args.gallery} synthetic templates each, {args.params}")

    procs: dict[str, subprocess.Popen[str]] = {}
    wrong = 0
    with tempfile.TemporaryDirectory(prefix="pprm-federation-") as root:
        states, galleries = {}, {}
        for i, code in enumerate(STATES):
            states[code] = State.init(f"{root}/{code}", code, threshold=THRESHOLD, params=args.params,
                                      allow_insecure=insecure, blind_params=blind_params,
                                      profiles={BLIND_PEER: "blind"})
            galleries[code] = make_gallery(args.gallery, seed=args.seed + i, prefix=code)
            KeyService(states[code]).enroll(galleries[code].templates, galleries[code].references)
        for code in STATES:
            for other in STATES:
                if other != code:
                    states[code].trust(states[other].card_bytes)
        try:
            urls = {}
            for code in STATES:
                procs[code], urls[code] = start(["serve", f"{root}/{code}", "--port", "0"])
            peers_file = f"{root}/peers.json"
            Path(peers_file).write_text(json.dumps(urls))
            procs["router"], router_url = start(["route", "--peers", peers_file, "--port", "0"])
            ports = ", ".join(f"{c} :{u.rsplit(':', 1)[1]}" for c, u in urls.items())
            print(f"  {len(STATES)} services ({ports}) and a router :{router_url.rsplit(':', 1)[1]},"
                  " each its own process")
            directory = Directory(router=router_url)

            for i, requester in enumerate(STATES):
                owner = STATES[(i + 1) % len(STATES)]
                index = int(rng.integers(args.gallery))
                print(f"\n{requester} asks all peers through the router; planted at {owner}: "
                      f"{galleries[owner].references[index]}")
                probe = mate_probe(galleries[owner], index, seed=i)
                peers = [p for p in STATES if p != requester]
                outcomes = ask(states[requester], probe, peers, case=f"{requester}-NET-{i + 1}",
                               purpose="serious-crime", directory=directory, timeout=120)
                wrong += report(states, galleries, requester, outcomes, probe, directory)

            print("\nNL's service is stopped; DE asks all peers about a person enrolled nowhere")
            stop(procs.pop("NL"))
            probe = impostor_probe(512, seed=args.seed)
            outcomes = ask(states["DE"], probe, ["FR", "NL", "HU", "AT"], case="DE-NET-99",
                           purpose="serious-crime", directory=directory, timeout=60)
            for o in outcomes:
                want = "unreachable" if o.peer == "NL" else "no hit"
                ok = o.status == want
                wrong += not ok
                print(f"  DE -> {o.peer}  {o.status:<12} expected: {want:<12}  {'ok' if ok else 'DISAGREES'}")
        finally:
            codes = {name: stop(p) for name, p in procs.items()}
        clean = all(c in (0, -signal.SIGTERM) for c in codes.values())
        print(f"\nstopped the other {len(codes)} processes with SIGTERM: {'all exited cleanly' if clean else codes}")
        wrong += not clean
        print("audit logs: " + ", ".join(f"{c} {states[c].audit.verify()} entries" for c in STATES)
              + ", all chains verify")

    if wrong:
        print(f"\n{wrong} outcome(s) DISAGREE with the planted truth")
        return 1
    print("\nevery outcome agrees with the planted truth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
