"""Blind decisions against the plaintext truth over a million pairs, with near-threshold pairs planted.

The blind matcher's answer is decrypted by the requester to one sign per
template. This script builds a blind database of ``--n`` templates (random
unit vectors, plus for every probe :data:`NEAR` templates whose score lies
within 0.01 of tau), answers ``--probes`` probes with the full blind
matcher (re-randomisation, real projection, window norms and key check,
masks, flood), decrypts every answer as the requester does, and counts the
(probe, template) pairs whose decision differs from ``s > tau`` among those
with ``|s - tau| >= 1e-3``. The default (100,000 templates, 10 probes) covers
a million pairs.

It also times, in the same run, the matcher for one probe (median over the
probes), numpy float32 ``G @ q`` on the same gallery, and the database build,
and reports the diagonals' RAM per template and the answer's bytes per
template. The whole responder path (verify, keys, box and sign) is timed by
``pprm bench --profile blind``.

Run::

    python bench/blind_agreement.py --n 100000 --probes 10
    python bench/blind_agreement.py --params pprm-blind-n16384-v2   # one template per slot, for comparison
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from pprm.bench import report
from pprm.crypto import blind_keys, blind_params
from pprm.crypto.answer_codec import decode_answer
from pprm.crypto.context import BlindContext
from pprm.matching.blind import BlindMatcher, answer_scale
from pprm.matching.blind_client import decrypt_values, encrypt_probe
from pprm.matching.diagonals import build_database

TAU = 0.4
MARGIN = 1e-3
NEAR = 2000  # planted per probe, scores uniform in tau +- 0.01


def _gallery(n: int, probes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    d = probes.shape[1]
    g = rng.standard_normal((n + NEAR * probes.shape[0], d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    for i, q in enumerate(probes):
        rows = slice(n + i * NEAR, n + (i + 1) * NEAR)
        t = rng.uniform(TAU - 0.01, TAU + 0.01, NEAR)
        v = g[rows] - np.outer(g[rows] @ q, q)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        g[rows] = t[:, None] * q[None, :] + np.sqrt(1.0 - t * t)[:, None] * v
    return g


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print the figures as JSON on stdout.

    Returns:
        0 when every decision agrees with the plaintext truth, 1 otherwise.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="random templates (planted ones come on top)")
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--params", default=blind_params.DEFAULT_BLIND_PARAMS)
    ap.add_argument("--seed", type=int, default=20261205)
    args = ap.parse_args(argv)
    ctx = BlindContext(blind_params.get(args.params, allow_insecure=True))
    p = ctx.params
    rng = np.random.default_rng(args.seed)
    probes = rng.standard_normal((args.probes, p.dim))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    g = _gallery(args.n, probes, rng)
    print(f"{len(g):,} templates, {args.probes} probes, {args.params}", file=sys.stderr)

    t0 = time.perf_counter()
    db = build_database(g, ctx)
    build_s = time.perf_counter() - t0
    print(f"database built in {build_s:.1f} s ({db.blocks} blocks)", file=sys.stderr)
    pair = blind_keys.generate(ctx)
    keys = blind_keys.load_announced(ctx, pair.public_blob, pair.galois_blob, pair.relin_blob)
    matcher = BlindMatcher(ctx, db)
    g32 = g.astype(np.float32)

    match_s, numpy_ms, answer_bytes = [], [], 0
    decided = wrong = near = 0
    for i, q in enumerate(probes):
        ct = ctx.load_seeded_ciphertext(encrypt_probe(ctx, pair.secret_key, q), scale=float(2**p.probe_scale_bits))
        t0 = time.perf_counter()
        answer = matcher.answer(ct, keys, TAU)
        match_s.append(time.perf_counter() - t0)
        answer_bytes = sum(len(c) for c in answer.ciphertexts)
        numpy_ms.append(statistics.median(report.numpy_baseline_runs_ms(g32, q.astype(np.float32))))
        scores = g @ q
        for pos, blk in enumerate(answer.order):
            values = decrypt_values(ctx, pair.secret_key,
                                    decode_answer(ctx, answer.ciphertexts[pos], answer_scale(ctx)))
            rec = db.slot_record[blk]
            occ = rec >= 0
            s = scores[rec[occ]]
            far = np.abs(s - TAU) >= MARGIN
            decided += int(far.sum())
            near += int((far & (np.abs(s - TAU) < 0.01)).sum())
            wrong += int(((values[occ] > 0) != (s > TAU))[far].sum())
        print(f"probe {i + 1}/{args.probes}: {match_s[-1] * 1e3:.0f} ms, {wrong} disagreements so far",
              file=sys.stderr)
    match_ms = statistics.median(match_s) * 1e3
    out = {
        "params": args.params, "templates": len(g), "blocks": db.blocks, "probes": args.probes,
        "pairs_decided": decided, "pairs_within_0.01_of_tau": near, "disagreements": wrong,
        "build_s": build_s, "match_ms": match_ms, "match_ms_runs": [t * 1e3 for t in match_s],
        "numpy_ms": statistics.median(numpy_ms), "ratio_to_numpy": match_ms / statistics.median(numpy_ms),
        "db_ram_bytes_per_template": db.nbytes / len(g), "answer_bytes_per_template": answer_bytes / len(g),
        "machine": report.machine_info(), "load_average": report.load_average(),
    }
    print(json.dumps(out, indent=1))
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
