"""Benchmarks of the sealed query, its plaintext reference and the kernel.

Run with ``pytest bench/ --benchmark-only``. Nothing here asserts a time:
the figures go to pytest-benchmark's table, and sizes and ratios to
``extra_info`` (kept by ``--benchmark-json``). Correctness is still checked
on the side (answers to planted mates must be hits; the kernel must match a
big-integer reference; decide must find exactly the positive values), so a
fast but wrong path cannot pass unnoticed.

``test_sealed_decide_at_scale`` times the key service's decide step on
``PPRM_BENCH_DECIDE_TEMPLATES`` positions (default 1,000,000) without
enrolling them (:func:`pprm.bench.sealed.build_decide_setup`), next to numpy
``G @ q`` over as many random float32 templates.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np

from pprm.bench.report import load_average, numpy_baseline_ms
from pprm.bench.sealed import build_decide_setup
from pprm.bench.setup import DIM, RESPONDER, BenchSetup
from pprm.crypto import keys
from pprm.matching import kernel
from pprm.matching.decide import SealedDecider
from pprm.matching.sealed import quantise_probe
from pprm.matching.templates import normalise_probe
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.synthetic import mate_probe

DECIDE_TEMPLATES = int(os.environ.get("PPRM_BENCH_DECIDE_TEMPLATES", "1000000"))


def _figures(sealed: BenchSetup, params: str, median_s: float) -> dict[str, object]:
    n = len(sealed)
    _kind, probe = sealed.probe(0, seed=9)
    numpy_ms = numpy_baseline_ms(sealed.templates, probe)
    return {
        "params": params,
        "backend": kernel.backend(),
        "n": n,
        "blocks": len(sealed.responder.gallery().index.blocks),
        "us_per_template": median_s * 1e6 / n,
        "numpy_ms": numpy_ms,
        "ratio_to_numpy": median_s * 1e3 / numpy_ms,
        "stored_bytes_per_template": sealed.stored_bytes() / n,
        "ram_bytes_per_template": sealed.ram_bytes() / n,
        "load_average": load_average(),
    }


def test_sealed_query(benchmark, sealed, bench_params, timed_answers):
    """Full responder path per query: verify, match, decrypt, mint tokens, sign and box."""
    requester = Requester(sealed.requester)
    counter = itertools.count()
    sent: list[tuple[int, bytes]] = []

    def fresh_query() -> bytes:
        i = next(counter)
        index = (i * 7919) % len(sealed)
        msg = requester.query(RESPONDER, mate_probe(sealed.gallery, index, i), case=f"B-{i}",
                              purpose="serious-crime")
        sent.append((index, msg))
        return msg

    answers, opened = timed_answers(requester, Responder(sealed.responder), fresh_query)
    info = _figures(sealed, bench_params, benchmark.stats.stats.median)
    info.update(query_bytes=len(sent[0][1]), answer_bytes_hit=len(answers[0]),
                candidates=[len(o.candidates) for o in opened])
    benchmark.extra_info.update(info)


def test_sealed_matcher_only(benchmark, sealed, bench_params, bench_rounds):
    """The matcher alone: multiply-accumulate, threshold, mask, serialise (no keys, no envelope)."""
    matcher = sealed.responder.matcher()
    _kind, probe = sealed.probe(1, seed=9)
    tau = sealed.responder.config.threshold
    benchmark.pedantic(matcher.match, args=(probe, tau), rounds=bench_rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(_figures(sealed, bench_params, benchmark.stats.stats.median))
    # What the matcher hands the key service (the same size every query).
    handed = matcher.match(probe, tau).nbytes
    benchmark.extra_info.update(key_service_bytes=handed, key_service_bytes_per_template=handed / len(sealed))


BATCH = int(os.environ.get("PPRM_BENCH_BATCH", "16"))


def test_sealed_batch_matcher(benchmark, sealed, bench_params, bench_rounds):
    """BATCH probes in one pass over the gallery (match_many), against the single-probe matcher in the same run.

    Each probe still gets its own masks; the decisions are checked against
    the single-probe path's (same hits for every probe).
    """
    matcher = sealed.responder.matcher()
    tau = sealed.responder.config.threshold
    probes = [sealed.probe(i, seed=21)[1] for i in range(BATCH)]
    singles = []
    for p in probes[:3]:
        t = time.perf_counter()
        matcher.match(p, tau)
        singles.append(time.perf_counter() - t)
    results = benchmark.pedantic(matcher.match_many, args=(probes, tau), rounds=max(1, bench_rounds // 2),
                                 warmup_rounds=0, iterations=1)
    st = sealed.responder
    decider = SealedDecider(st.ctx, keys.load_secret_key(st.ctx, st.secret_key_path()), matcher.gallery)
    for p, r in zip(probes[:3], results, strict=False):
        assert set(decider.hits(r)) == set(decider.hits(matcher.match(p, tau)))
    single_ms = float(np.median(singles)) * 1e3
    per_probe_ms = benchmark.stats.stats.median * 1e3 / BATCH
    benchmark.extra_info.update(_figures(sealed, bench_params, benchmark.stats.stats.median / BATCH))
    benchmark.extra_info.update(batch=BATCH, per_probe_ms=per_probe_ms, single_matcher_ms=single_ms,
                                per_probe_over_single=per_probe_ms / single_ms)


def test_sealed_decide_at_scale(benchmark, bench_params, bench_rounds, tmp_path):
    """The key service's decide on a packed masked result of DECIDE_TEMPLATES positions, no enrolment."""
    setup = build_decide_setup(DECIDE_TEMPLATES, bench_params, allow_insecure=bench_params.startswith("INSECURE"),
                               workdir=str(tmp_path))
    try:
        hits = benchmark.pedantic(setup.decider.hits, args=(setup.result,), rounds=bench_rounds, warmup_rounds=1,
                                  iterations=1)
        assert hits == setup.expected
        median_ms = benchmark.stats.stats.median * 1e3
        rng = np.random.default_rng(1)
        gallery = rng.standard_normal((setup.templates, DIM), dtype=np.float32)
        numpy_ms = numpy_baseline_ms(gallery, rng.standard_normal(DIM, dtype=np.float32))
        benchmark.extra_info.update(
            params=bench_params, templates=setup.templates, blocks=len(setup.result.blocks),
            threads=setup.decider.threads, key_service_bytes=setup.result.nbytes,
            key_service_bytes_per_template=setup.result.nbytes / setup.templates, decide_ms=median_ms,
            numpy_ms=numpy_ms, ratio_to_numpy=median_ms / numpy_ms, load_average=load_average())
    finally:
        setup.close()


def test_numpy_plaintext_baseline(benchmark, sealed, bench_params):
    """The plaintext reference of docs/DESIGN.md section 8: float32 G @ q over the same templates."""
    g = np.ascontiguousarray(sealed.templates, dtype=np.float32)
    _kind, probe = sealed.probe(0, seed=9)
    q = np.ascontiguousarray(probe, dtype=np.float32)
    scores = benchmark(np.matmul, g, q)
    assert scores.shape == (len(sealed),)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(params=bench_params, n=len(sealed), bytes_per_template=g.nbytes / len(sealed),
                                gb_per_s=g.nbytes / median / 1e9,
                                us_per_template=median * 1e6 / len(sealed))


def test_kernel_one_block(benchmark, smallest, bench_params):
    """multiply_accumulate over one gallery block held in RAM (the matcher's inner loop)."""
    sealed = smallest
    gallery = sealed.responder.gallery()
    ctx = sealed.responder.ctx
    block = np.array(gallery.block(0))  # a private copy in RAM, not the memory map
    _kind, probe = sealed.probe(0, seed=9)
    w = quantise_probe(normalise_probe(probe, gallery.dim), ctx.params.probe_scale_bits)
    out = benchmark(kernel.multiply_accumulate, block, w, ctx.moduli)

    # Exactness on a few coefficients, against Python's big integers.
    q = ctx.moduli[0]
    wl = [int(x) for x in w]
    for c in (0, 1, block.shape[-1] - 1):
        for poly in range(block.shape[1]):
            want = sum(wk * int(v) for wk, v in zip(wl, block[:, poly, 0, c], strict=True)) % q
            assert int(out[poly, 0, c]) == want

    median = benchmark.stats.stats.median
    macs = block.shape[0] * block.shape[1] * block.shape[2] * block.shape[3]
    benchmark.extra_info.update(
        params=bench_params, backend=kernel.backend(), block_shape=list(block.shape), block_bytes=block.nbytes,
        templates_per_block=ctx.params.slots, macs=macs, macs_per_s=macs / median,
        gb_per_s=block.nbytes / median / 1e9, ms_per_1k_templates=median * 1e6 / ctx.params.slots)
