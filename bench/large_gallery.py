"""Sealed query on a large gallery (default 1,000,000 x 512), built in chunks.

``pprm bench`` builds its galleries in one piece with synthetic identities,
which needs several bytes of float64 per template component in RAM. This
script enrols chunk by chunk (random unit templates, plus planted mates), so
the only large things in memory are the float32 plaintext copy kept for the
numpy baseline and the agreement check, and the page cache behind the
memory-mapped ciphertext blocks.

After the ``--n`` random templates it enrols planted ones: for every probe,
:data:`NEAR` templates whose score lies within 0.01 of tau and
:data:`MATES` clear mates, so that the agreement check covers the pairs
where a wrong decision would be likeliest.

It reports, as JSON on stdout: enrolment time, the full responder query
(median of ``--repeats``), matcher-only and decide-only times, microseconds
per template, numpy float32 ``G @ q`` in the same run and the ratio, faiss
``IndexFlatIP`` when faiss is installed, RAM and disk bytes per template, and
decision agreement with the plaintext truth for every (probe, template) pair
with ``|s - tau| >= 1e-3``. With ``--batch B`` it also matches B probes in one
pass (:meth:`pprm.matching.sealed.SealedMatcher.match_many`) and reports the
time per probe against the single query's and against numpy's and faiss's
batched search, in the same run. ``--gallery-memory resident`` reads the
blocks into the process before the first query (``PPRM_GALLERY_MEMORY``, as
``pprm serve --gallery-memory resident`` does) and reports that load time.

Run::

    python bench/large_gallery.py --n 1000000 --workdir /var/tmp/pprm-1m --batch 16
    python bench/large_gallery.py --n 1000000 --workdir /var/tmp/pprm-1m --batch 16 --reuse
    python bench/large_gallery.py --n 1000000 --workdir /var/tmp/pprm-1m --batch 16 --reuse --gallery-memory resident
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pprm import KeyService, Requester, Responder, State
from pprm.bench.report import machine_info
from pprm.crypto import keys
from pprm.matching.decide import SealedDecider
from pprm.matching.gallery import GALLERY_MEMORY_ENV
from pprm.synthetic import unit_vectors

CHUNK = 40960  # ten blocks at N=8192
DIM = 512
TAU = 0.4
NEAR = 200  # planted templates per probe with |s - tau| <= 0.01
MATES = 20  # planted templates per probe with s in [tau + 0.05, 0.9]


def _chunk(i: int, n: int) -> np.ndarray:
    return unit_vectors(n, DIM, np.random.default_rng([0xB16, i])).astype(np.float32)


def _probes(count: int) -> np.ndarray:
    return unit_vectors(count, DIM, np.random.default_rng([0xB16, 0x9B0B])).astype(np.float32)


def _planted(probes: np.ndarray) -> np.ndarray:
    """Per probe: NEAR templates scoring within 0.01 of tau and MATES clear mates (float32 unit rows)."""
    rng = np.random.default_rng([0xB16, 0x91A7])
    rows = []
    for p in probes.astype(np.float64):
        s = np.concatenate([rng.uniform(TAU - 0.01, TAU + 0.01, NEAR), rng.uniform(TAU + 0.05, 0.9, MATES)])
        u = rng.standard_normal((s.size, DIM))
        u -= np.outer(u @ p, p)  # orthogonal to the probe
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        rows.append(s[:, None] * p + np.sqrt(1.0 - s[:, None] ** 2) * u)
    return np.concatenate(rows).astype(np.float32)


def _scores(plain: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """float64 scores of the float32 templates, chunk by chunk (no float64 copy of the gallery)."""
    q = probe.astype(np.float32).astype(np.float64)
    return np.concatenate([plain[i:i + CHUNK].astype(np.float64) @ q for i in range(0, plain.shape[0], CHUNK)])


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="random templates (planted ones come on top)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probes", type=int, default=5, help="probes for the agreement check (at least --batch)")
    ap.add_argument("--batch", type=int, default=0, help="also match this many probes in one pass")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--params", default=None, help="parameter set (default: the production set)")
    ap.add_argument("--gallery-memory", choices=("mapped", "resident"), default="mapped",
                    help="sealed blocks memory-mapped (default) or read into this process (PPRM_GALLERY_MEMORY)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the gallery an earlier run left in --workdir (same --n) instead of enrolling")
    args = ap.parse_args(argv)
    os.environ[GALLERY_MEMORY_ENV] = args.gallery_memory
    nprobes = max(args.probes, args.batch, 1)

    root = args.workdir or tempfile.mkdtemp(prefix="pprm-large-")
    os.makedirs(root, exist_ok=True)
    try:
        probes = _probes(nprobes)
        planted = _planted(probes)
        total = args.n + planted.shape[0]
        plain = np.empty((total, DIM), dtype=np.float32)
        plain[args.n:] = planted
        enroll_s: float | None = None
        reused = args.reuse and os.path.isdir(os.path.join(root, "FR"))
        if reused:
            # The chunks are seeded by their index, so the plaintext copy is rebuilt, not stored.
            fr, de = State.open(os.path.join(root, "FR")), State.open(os.path.join(root, "DE"))
            have = len(fr.gallery())
            if have not in (args.n, total):
                ap.error(f"--reuse: {root} holds {have:,} templates, not {args.n:,} or {total:,}")
            for i, start in enumerate(range(0, args.n, CHUNK)):
                plain[start:start + min(CHUNK, args.n - start)] = _chunk(i, min(CHUNK, args.n - start))
            if have == args.n:  # an earlier run of this script, before planted templates
                KeyService(fr).enroll(planted, [f"FR-P{j:07d}" for j in range(planted.shape[0])])
        else:
            insecure = bool(args.params and args.params.startswith("INSECURE"))
            fr = State.init(os.path.join(root, "FR"), "FR", threshold=TAU, params=args.params,
                            allow_insecure=insecure)
            de = State.init(os.path.join(root, "DE"), "DE", threshold=TAU, allow_insecure=insecure)
            fr.trust(de.card_bytes)
            de.trust(fr.card_bytes)
            ks = KeyService(fr)
            t0 = time.perf_counter()
            for i, start in enumerate(range(0, args.n, CHUNK)):
                rows = _chunk(i, min(CHUNK, args.n - start))
                plain[start:start + rows.shape[0]] = rows
                ks.enroll(rows, [f"FR-{start + j:08d}" for j in range(rows.shape[0])])
                print(f"enrolled {start + rows.shape[0]:,}/{args.n:,}", file=sys.stderr)
            ks.enroll(planted, [f"FR-P{j:07d}" for j in range(planted.shape[0])])
            enroll_s = time.perf_counter() - t0

        gallery = fr.gallery()
        t_load = time.perf_counter()
        gallery.preload()  # mapped: opens the maps; resident: reads every block, as `pprm serve` does
        load_s = time.perf_counter() - t_load
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

        def agree(probe: np.ndarray, hits: set[int]) -> tuple[int, int, int]:
            s = _scores(plain, probe)
            got = np.zeros(total, dtype=bool)
            got[list(hits)] = True  # record ids are assigned in enrolment order
            far = np.abs(s - TAU) >= 1e-3
            near = far & (np.abs(s - TAU) <= 0.01)
            return int(far.sum()), int(((s >= TAU) != got)[far].sum()), int(near.sum())

        # The plaintext truth is computed after the timed loops: its BLAS
        # threads keep spinning for a while after each call, and would tax
        # whatever runs next (measured: about 60 ms of a 1M match).
        checks: list[tuple[np.ndarray, set[int]]] = []
        match_t: list[float] = []
        decide_t: list[float] = []
        for p in probes[:args.probes]:
            t = time.perf_counter()
            res = matcher.match(p, TAU)
            t1 = time.perf_counter()
            checks.append((p, set(decider.hits(res))))
            decide_t.append(time.perf_counter() - t1)
            match_t.append(t1 - t)
        pq = probes[0]
        numpy_s = _median_s(lambda: plain @ pq, 10)
        faiss_s = faiss_batch_s = None
        faiss: Any = None
        with contextlib.suppress(ImportError):
            faiss = importlib.import_module("faiss")  # optional anchor, not a dependency
        if faiss is not None:
            index = faiss.IndexFlatIP(DIM)
            index.add(plain)
            faiss_s = _median_s(lambda: index.range_search(probes[:1], TAU), 5)
        blocks = len(gallery.index.blocks)
        ram = blocks * int(np.prod(gallery.block_shape)) * 8
        med = statistics.median(full)
        out: dict[str, object] = {
            "machine": machine_info(), "params": fr.config.params, "n": total, "planted": planted.shape[0],
            "blocks": blocks, "enroll_s": enroll_s, "reused": reused,
            "gallery_memory": args.gallery_memory, "load_s": load_s,
            "query_ms": med * 1e3, "query_ms_runs": [x * 1e3 for x in full],
            "matcher_ms": statistics.median(match_t) * 1e3, "decide_ms": statistics.median(decide_t) * 1e3,
            "us_per_template": med * 1e6 / total, "numpy_ms": numpy_s * 1e3,
            "ratio_to_numpy": med / numpy_s,
            "faiss_ms": None if faiss_s is None else faiss_s * 1e3,
            "ram_bytes_per_template": ram / total, "disk_bytes_per_template": gallery.stored_bytes() / total,
        }
        if args.batch:
            batch = probes[:args.batch]
            # A warm-up pass (the result buffers, the batch's code paths), then
            # three timed passes, each drawing its own masks; the median counts
            # and every pass is checked.
            checks.extend(zip(batch, [set(decider.hits(r)) for r in matcher.match_many(list(batch), TAU)],
                              strict=True))
            passes = []
            for _ in range(3):
                t = time.perf_counter()
                results = matcher.match_many(list(batch), TAU)
                t1 = time.perf_counter()
                batch_hits = [set(decider.hits(r)) for r in results]
                passes.append((time.perf_counter() - t, t1 - t))
                checks.extend(zip(batch, batch_hits, strict=True))
            total_s, match_s = sorted(passes)[1]
            single = statistics.median(match_t) + statistics.median(decide_t)
            per_probe = total_s / args.batch
            numpy_batch_s = _median_s(lambda: plain @ batch.T, 3) / args.batch
            if faiss is not None:
                faiss_batch_s = _median_s(lambda: index.range_search(batch, TAU), 3) / args.batch
            out["batch"] = {
                "probes": args.batch, "match_ms": match_s * 1e3, "decide_ms": (total_s - match_s) * 1e3,
                "pass_ms": [x[0] * 1e3 for x in passes],
                "per_probe_ms": per_probe * 1e3, "single_match_decide_ms": single * 1e3,
                "per_probe_over_single": per_probe / single, "per_probe_over_full_query": per_probe / med,
                "numpy_batched_per_probe_ms": numpy_batch_s * 1e3,
                "per_probe_over_numpy_batched": per_probe / numpy_batch_s,
                "faiss_batched_per_probe_ms": None if faiss_batch_s is None else faiss_batch_s * 1e3,
                "per_probe_over_faiss_batched": None if faiss_batch_s is None else per_probe / faiss_batch_s,
            }
        wrong = decisive = near_pairs = 0
        for p, hits in checks:
            far, bad, near = agree(p, hits)
            decisive, wrong, near_pairs = decisive + far, wrong + bad, near_pairs + near
        out["agreement"] = {"pairs": decisive, "disagreements": wrong, "pairs_within_0.01_of_tau": near_pairs,
                            "probes": args.probes + 4 * args.batch}
        print(json.dumps(out, indent=1))
        return 0 if wrong == 0 else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
