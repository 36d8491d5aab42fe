"""Enrolment through SEAL against enrolment in C, side by side on the same machine.

The numpy backend encrypts one ciphertext at a time through SEAL's binding
(encoder, ``encrypt_symmetric``, a file round trip per ciphertext); the
native backend encrypts whole blocks in C (:mod:`pprm.matching.encrypt_native`).
Each run enrols ``--n`` random unit templates into a fresh state in a
child process with ``PPRM_BACKEND`` set, the two alternating ``--rounds``
times, so both see the same machine. It prints JSON: every run's seconds,
the medians, and the ratio.

With ``--baseline-rev REV`` the SEAL side runs the package as it was at
that git revision (``git archive``, numpy backend), so that a change to the
shared enrolment path (such as writing blocks while the next is encrypted)
is measured against the code before it, not credited to both sides.

Run::

    python bench/enrol_compare.py --n 81920 --rounds 2
    python bench/enrol_compare.py --n 81920 --rounds 2 --baseline-rev dd0d665
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from pprm.bench.report import load_average, machine_info

_CHILD = """
import sys, tempfile, time
import numpy as np
from pprm import KeyService, State
from pprm.synthetic import unit_vectors
n, params, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
st = State.init(tempfile.mkdtemp(dir=root), "FR", threshold=0.4, params=params)
rows = unit_vectors(n, 512, np.random.default_rng(5)).astype(np.float32)
refs = [f"FR-{i:08d}" for i in range(n)]
ks = KeyService(st)
t = time.perf_counter()
ks.enroll(rows, refs)
print(time.perf_counter() - t)
"""


def _run(backend: str, n: int, params: str, root: str, package_root: str | None = None) -> float:
    env = dict(os.environ, PPRM_BACKEND=backend)
    if package_root is not None:
        env["PYTHONPATH"] = package_root
    done = subprocess.run([sys.executable, "-c", _CHILD, str(n), params, root], env=env, capture_output=True,
                          text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=81920, help="templates per enrolment (default 81,920: 10 blocks)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--params", default="pprm-sealed-n8192-complex-v1")
    ap.add_argument("--baseline-rev", default=None,
                    help="run the SEAL side from this git revision of the package (default: the working tree)")
    args = ap.parse_args(argv)
    load = [load_average()]
    seal_s: list[float] = []
    native_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pprm-enrol-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None) \
            as root:
        baseline = None
        if args.baseline_rev:
            baseline = os.path.join(root, "baseline")
            os.makedirs(baseline)
            repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            archive = subprocess.run(["git", "-C", repo, "archive", args.baseline_rev, "pprm"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", baseline], input=archive, check=True)
        for _ in range(args.rounds):
            seal_s.append(_run("numpy", args.n, args.params, root, baseline))
            native_s.append(_run("native", args.n, args.params, root))
    load.append(load_average())
    out = {
        "machine": machine_info(), "params": args.params, "n": args.n, "load_average": load,
        "seal_side": f"revision {args.baseline_rev}" if args.baseline_rev else "working tree",
        "seal_s": seal_s, "native_s": native_s,
        "seal_median_s": statistics.median(seal_s), "native_median_s": statistics.median(native_s),
        "speedup": statistics.median(seal_s) / statistics.median(native_s),
        "projected_1m_native_s": statistics.median(native_s) * 1_000_000 / args.n,
        "projected_1m_seal_s": statistics.median(seal_s) * 1_000_000 / args.n,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
