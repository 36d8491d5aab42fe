"""A blind search: the requesting state's probe never leaves it in clear.

DE searches FR's gallery in the blind profile: DE encrypts the probe under a
CKKS key only it holds (announced to FR once per case), FR computes on its
gallery without seeing the probe and returns a masked, re-randomised,
noise-flooded answer, and DE learns only which candidates clear the
threshold. Step two follows a candidate up, which retires DE's key for the
case. Then DE searches for a person enrolled nowhere.

What DE learned is printed beside the plaintext truth; the script exits with
status 1 if it disagrees.

Run::

    python examples/blind_search.py                 # production parameters (N=16384; ~20 s)
    python examples/blind_search.py --gallery 300 --params INSECURE-sealed-n1024   # fast, tests only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from pprm import KeyService, Requester, Responder, State
from pprm.crypto.blind_params import DEFAULT_BLIND_PARAMS
from pprm.crypto.params import DEFAULT_PARAMS
from pprm.synthetic import SyntheticGallery, impostor_probe, make_gallery, mate_probe

THRESHOLD = 0.4


def truth(gallery: SyntheticGallery, probe: np.ndarray) -> list[str]:
    """References a plaintext search of ``gallery`` would return."""
    q = probe.astype(np.float64) / np.linalg.norm(probe)
    scores = gallery.templates.astype(np.float64) @ q
    return [gallery.references[i] for i in np.flatnonzero(scores >= THRESHOLD)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=5000, help="templates at FR (default 5000)")
    ap.add_argument("--params", default=DEFAULT_PARAMS, help="sealed parameter set of both states")
    args = ap.parse_args()
    insecure = args.params.startswith("INSECURE")
    blind = "INSECURE-blind-n1024-complex-v3" if insecure else DEFAULT_BLIND_PARAMS
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pprm-blind-example-") as root:
        kw = {"params": args.params, "blind_params": blind, "allow_insecure": insecure}
        de = State.init(f"{root}/de", "DE", **kw)  # type: ignore[arg-type]
        fr = State.init(f"{root}/fr", "FR", **kw)  # type: ignore[arg-type]
        de.trust(fr.card_bytes)
        fr.trust(de.card_bytes)
        gallery = make_gallery(args.gallery, seed=3, prefix="FR")
        KeyService(fr).enroll(gallery.templates, gallery.references)
        print(f"DE and FR, {args.gallery} synthetic templates at FR, blind set {blind}")
        requester, responder = Requester(de), Responder(fr)
        planted = gallery.references[17]
        agree = True
        for label, probe, case in (("a person enrolled at FR", mate_probe(gallery, 17, seed=5), "C-BLIND-1"),
                                   ("a person enrolled nowhere", impostor_probe(gallery.templates.shape[1], 6),
                                    "C-BLIND-2")):
            announcement, query = requester.blind_query("FR", probe, case=case, purpose="serious-crime")
            print(f"DE searches FR blind for {label}: query {len(query):,} B"
                  + (f", new key announced ({len(announcement):,} B)" if announcement else ""))
            answer = responder.answer(query, announcements=[announcement] if announcement else [])
            opened = requester.open(answer)
            learned = [KeyService(fr).resolve(requester.follow_up(answer, h)).reference for h in opened.candidates]
            want = truth(gallery, probe)
            ok = sorted(learned) == sorted(want)
            agree &= ok
            print(f"  answer {len(answer):,} B; learned {', '.join(learned) or 'no hit'}  "
                  f"truth: {', '.join(want) or 'no hit'}  {'ok' if ok else 'MISMATCH'}")
        print(f"  (planted: {planted}); DE's key for C-BLIND-1 is retired: "
              f"{de.blind_keyring.active('FR', 'C-BLIND-1', time.time()) is None}")
        print(f"audit logs: DE {de.audit.verify()} entries, FR {fr.audit.verify()} entries, both chains verify")
    print(f"{'the blind answers agree' if agree else 'DISAGREEMENT'} with the plaintext truth "
          f"({time.monotonic() - started:.1f} s)")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
