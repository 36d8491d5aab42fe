"""Sealed query on a large gallery (default 1,000,000 x 512), built in chunks.

``pprm bench`` builds its galleries in one piece with synthetic identities,
which needs several bytes of float64 per template component in RAM. This
script enrols chunk by chunk (random unit templates, plus planted mates), so
the only large things in memory are the float32 plaintext copy kept for the
numpy baseline and the agreement check, and the page cache behind the
memory-mapped ciphertext blocks.

It reports, as JSON on stdout: enrolment time, the full responder query
(median of ``--repeats``), matcher-only and decide-only times, microseconds
per template, numpy float32 ``G @ q`` in the same run and the ratio, RAM and
disk bytes per template, and decision agreement with the plaintext truth for
every (probe, template) pair with ``|s - tau| >= 1e-3``.

Run::

    python bench/large_gallery.py --n 1000000 --workdir /var/tmp/pprm-1m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from pprm import KeyService, Requester, Responder, State
from pprm.bench.report import machine_info
from pprm.crypto import keys
from pprm.matching.decide import SealedDecider
from pprm.synthetic import unit_vectors

CHUNK = 40960  # ten blocks at N=8192
DIM = 512
TAU = 0.4


def _chunk(i: int, n: int) -> np.ndarray:
    return unit_vectors(n, DIM, np.random.default_rng([0xB16, i])).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probes", type=int, default=5, help="probes for the agreement check")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--params", default=None, help="parameter set (default: the production set)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the gallery an earlier run left in --workdir (same --n) instead of enrolling")
    args = ap.parse_args(argv)

    root = args.workdir or tempfile.mkdtemp(prefix="pprm-large-")
    os.makedirs(root, exist_ok=True)
    try:
        plain = np.empty((args.n, DIM), dtype=np.float32)
        enroll_s: float | None = None
        if args.reuse and os.path.isdir(os.path.join(root, "FR")):
            # The chunks are seeded by their index, so the plaintext copy is rebuilt, not stored.
            fr, de = State.open(os.path.join(root, "FR")), State.open(os.path.join(root, "DE"))
            if len(fr.gallery()) != args.n:
                ap.error(f"--reuse: {root} holds {len(fr.gallery()):,} templates, not {args.n:,}")
            for i, start in enumerate(range(0, args.n, CHUNK)):
                plain[start:start + min(CHUNK, args.n - start)] = _chunk(i, min(CHUNK, args.n - start))
        else:
            fr = State.init(os.path.join(root, "FR"), "FR", threshold=TAU, params=args.params)
            de = State.init(os.path.join(root, "DE"), "DE", threshold=TAU)
            fr.trust(de.card_bytes)
            de.trust(fr.card_bytes)
            ks = KeyService(fr)
            t0 = time.perf_counter()
            for i, start in enumerate(range(0, args.n, CHUNK)):
                rows = _chunk(i, min(CHUNK, args.n - start))
                plain[start:start + rows.shape[0]] = rows
                ks.enroll(rows, [f"FR-{start + j:08d}" for j in range(rows.shape[0])])
                print(f"enrolled {start + rows.shape[0]:,}/{args.n:,}", file=sys.stderr)
            enroll_s = time.perf_counter() - t0

        rng = np.random.default_rng(7)
        # Probes: noisy copies of gallery rows (mates) and blends that land near tau.
        probes = []
        for _ in range(args.probes):
            a = plain[rng.integers(args.n)].astype(np.float64)
            b = unit_vectors(1, DIM, rng)[0]
            probes.append((TAU + rng.uniform(-0.01, 0.3)) * a + 0.9 * b)
        probes = [p / np.linalg.norm(p) for p in probes]

        gallery = fr.gallery()
        matcher = fr.matcher(gallery)
        # The benchmark times the decide step alone, so it holds the key service's key itself.
        decider = SealedDecider(fr.ctx, keys.load_secret_key(fr.ctx, fr.secret_key_path()), gallery)
        q_msgs = [Requester(de).query("FR", probes[0], f"B-{r}", "serious-crime") for r in range(args.repeats + 1)]
        responder = Responder(fr)
        responder.answer(q_msgs[0])  # warm-up: page cache, code paths
        full = []
        for msg in q_msgs[1:]:
            t = time.perf_counter()
            responder.answer(msg)
            full.append(time.perf_counter() - t)
        match_t, decide_t, wrong, decisive = [], [], 0, 0
        for p in probes:
            t = time.perf_counter()
            res = matcher.match(p, TAU)
            t1 = time.perf_counter()
            hits = set(decider.hits(res))
            decide_t.append(time.perf_counter() - t1)
            match_t.append(t1 - t)
            s = plain.astype(np.float64) @ p.astype(np.float32).astype(np.float64) if args.n <= 200_000 \
                else np.concatenate([plain[i:i + CHUNK].astype(np.float64) @ p.astype(np.float32).astype(np.float64)
                                     for i in range(0, args.n, CHUNK)])
            got = np.zeros(args.n, dtype=bool)
            got[list(hits)] = True  # record ids are assigned in enrolment order
            far = np.abs(s - TAU) >= 1e-3
            decisive += int(far.sum())
            wrong += int(((s >= TAU) != got)[far].sum())
        pq = probes[0].astype(np.float32)
        base = []
        for _ in range(10):
            t = time.perf_counter()
            plain @ pq
            base.append(time.perf_counter() - t)
        blocks = len(gallery.index.blocks)
        ram = blocks * int(np.prod(gallery.block_shape)) * 8
        med = statistics.median(full)
        out = {
            "machine": machine_info(), "params": fr.config.params, "n": args.n, "blocks": blocks,
            "enroll_s": enroll_s,
            "query_ms": med * 1e3, "query_ms_runs": [x * 1e3 for x in full],
            "matcher_ms": statistics.median(match_t) * 1e3, "decide_ms": statistics.median(decide_t) * 1e3,
            "us_per_template": med * 1e6 / args.n, "numpy_ms": statistics.median(base) * 1e3,
            "ratio_to_numpy": med / statistics.median(base),
            "ram_bytes_per_template": ram / args.n, "disk_bytes_per_template": gallery.stored_bytes() / args.n,
            "agreement": {"pairs": decisive, "disagreements": wrong, "probes": len(probes)},
        }
        print(json.dumps(out, indent=1))
        return 0 if wrong == 0 else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
