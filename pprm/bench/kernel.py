"""The multiply-accumulate kernels on production-shaped blocks, per backend.

Two uses:

* :func:`mac_figures` and :func:`plain_mac_figures` time one block of a
  parameter set's shape with every available backend; ``pprm bench`` records
  them with each run (sealed and blind respectively).
* ``python -m pprm.bench.kernel [--blocks 4] [--repeat 5] [--plain-only]``
  (with the native extension built) prints a fuller comparison.
  ``multiply_accumulate`` on blocks of shape d=512, size=2, L=1, N=8192 (one
  n8192 block, 4096 templates): the numpy path, the native kernel with 1 and
  2 threads, and two Python threads each calling the native kernel with 1
  thread at the same time (which only runs in parallel if the call releases
  the GIL; shown on production blocks, and on a cache-resident block where
  RAM bandwidth cannot cap the speed-up). Several distinct blocks are cycled
  so that every call streams from RAM, as a real gallery larger than the
  last-level cache does. It prints seconds per block, multiply-accumulates
  per second, GB/s of residues read, and the extrapolation to 100k (25
  blocks) and 1M (245 blocks) templates. Then ``plain_mac`` (the blind
  profile's plaintext-times-ciphertext sums) at its real shape, G=8, B=64,
  S=2, L=4, N=8192: 128 MiB of plaintext residues per call, two distinct
  sets cycled so that every call streams them from RAM; ms per call for the
  numpy path and the native kernel with 1 and 2 threads, G
  multiply-accumulates per second, and GB/s of plaintext residues read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from pprm.bench.setup import DIM
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.crypto.context import BlindContext, CkksContext
from pprm.matching import kernel, kernel_batch, kernel_native, kernel_numpy

__all__ = ["mac_figures", "plain_mac_figures", "bench_plain", "main"]

# The command's shapes: one n8192 sealed block on a 60-bit prime, and plain_mac's
# real shape, G giant steps of B baby-step plaintexts, S = 2, L = 4 primes.
Q = 1152921504606830593
D, SIZE, N = 512, 2, 8192
TEMPLATES_PER_BLOCK = N // 2
PG, PB, PS, PL = 8, 64, 2, 4


def _per_backend(runs: dict[str, Callable[[], Any]], rounds: int, macs: int, nbytes: int,
                 templates_per_block: int) -> dict[str, dict[str, float]]:
    """Each backend's median over ``rounds`` calls (after one warm-up), as figures per block."""
    out: dict[str, dict[str, float]] = {}
    for name, fn in runs.items():
        fn()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out[name] = {"ms_per_block": med * 1e3, "gmac_per_s": macs / med / 1e9, "gb_per_s": nbytes / med / 1e9,
                     "ms_per_1k_templates": med * 1e3 * 1000 / templates_per_block}
    return out


def mac_figures(params: param_sets.ParameterSet, rounds: int = 5) -> dict[str, Any]:
    """Time the sealed multiply-accumulate on one block of ``params``' shape, per backend.

    Random residues below the data prime and the weights of a random unit
    probe at 2**15, as a query quantises them; each backend's median over
    ``rounds`` calls. The numpy path is always measured (it is the
    reference); the native kernel too when it is the active backend, through
    the batched kernel at one probe, which is what a sealed query runs
    (:meth:`pprm.matching.sealed.BlockScorer.run`).

    Args:
        params: the sealed parameter set whose block shape is timed.
        rounds: timed calls per backend.

    Returns:
        ``{"block_shape", "templates_per_block", "backends": {name: {"ms_per_block",
        "gmac_per_s", "gb_per_s", "ms_per_1k_templates"}}}``.
    """
    shape = (DIM, 2, params.data_primes, params.poly_modulus_degree)
    rng = np.random.default_rng(0)
    moduli = CkksContext(params).moduli
    block = rng.integers(0, min(moduli), size=shape, dtype=np.uint64)
    unit = rng.standard_normal(DIM)
    weights = np.rint(unit / np.linalg.norm(unit) * 2.0**15).astype(np.int64)
    runs: dict[str, Callable[[], Any]] = {"numpy": lambda: kernel_numpy.multiply_accumulate(block, weights, moduli)}
    if kernel.backend() == "native":
        row = weights.reshape(1, -1)
        runs["native"] = lambda: kernel_batch.multiply_accumulate_many(block, row, moduli)
    macs = DIM * 2 * params.data_primes * params.poly_modulus_degree
    return {"block_shape": list(shape), "templates_per_block": params.templates_per_block,
            "backends": _per_backend(runs, rounds, macs, block.nbytes, params.templates_per_block)}


def plain_mac_figures(params: blind_param_sets.BlindParameterSet, rounds: int = 3) -> dict[str, Any]:
    """Time the blind kernel (plaintext times ciphertext residues) on one block's shape, per backend.

    One call is one block of a query: ``g2 x b1`` diagonals against the ``b1``
    baby-step ciphertexts, random residues below the smallest prime. Each
    backend's median over ``rounds`` calls; numpy always, native when active.

    Args:
        params: the blind parameter set whose block shape is timed.
        rounds: timed calls per backend.

    Returns:
        ``{"pts_shape", "cts_shape", "templates_per_block", "backends": {name:
        {"ms_per_block", "gmac_per_s", "gb_per_s", "ms_per_1k_templates"}}}``
        (GB/s counts the diagonals streamed, which dominate).
    """
    moduli = BlindContext(params).moduli
    rng = np.random.default_rng(0)
    pts = rng.integers(0, min(moduli), size=(params.giant_steps, params.baby_steps, len(moduli),
                                             params.poly_modulus_degree), dtype=np.uint64)
    cts = rng.integers(0, min(moduli), size=(params.baby_steps, 2, len(moduli), params.poly_modulus_degree),
                       dtype=np.uint64)
    runs: dict[str, Callable[[], Any]] = {"numpy": lambda: kernel_numpy.plain_mac(pts, cts, moduli)}
    if kernel.backend() == "native":
        runs["native"] = lambda: kernel.plain_mac(pts, cts, moduli)
    return {"pts_shape": list(pts.shape), "cts_shape": list(cts.shape),
            "templates_per_block": params.templates_per_block,
            "backends": _per_backend(runs, rounds, pts.size * 2, pts.nbytes, params.templates_per_block)}


# -- python -m pprm.bench.kernel ------------------------------------------------------------

def _time(fn: Callable[[int], object], blocks: int, repeat: int) -> float:
    """Median seconds per block over ``repeat`` passes over all blocks (after one warm-up pass)."""
    for b in range(blocks):
        fn(b)
    per_block = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in range(blocks):
            fn(b)
        per_block.append((time.perf_counter() - t0) / blocks)
    return statistics.median(per_block)


def _two_python_threads(call: Callable[[int], object], blocks: int, repeat: int) -> float:
    """Seconds per block when two Python threads each run ``call`` over all blocks concurrently."""
    results = []
    for _ in range(repeat):
        barrier = threading.Barrier(3)

        def worker(start: threading.Barrier) -> None:
            start.wait()
            for b in range(blocks):
                call(b)

        workers = [threading.Thread(target=worker, args=(barrier,)) for _ in range(2)]
        for t in workers:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in workers:
            t.join()
        results.append((time.perf_counter() - t0) / (2 * blocks))
    return statistics.median(results)


def bench_plain(repeat: int) -> None:
    """Time ``plain_mac`` at its real shape and print a table.

    Args:
        repeat: passes per kernel (half as many, at least one, for numpy).

    Raises:
        SystemExit: the native kernel disagrees with numpy.
    """
    moduli = tuple(m.value() for m in seal.CoeffModulus.Create(N, [60] * PL))
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, PL, 1)
    rng = np.random.default_rng(2)
    # Two distinct plaintext sets (2 x 128 MiB): more than the last-level cache, so every call reads RAM.
    pts = [rng.integers(0, 1 << 62, size=(PG, PB, PL, N), dtype=np.uint64) % q for _ in range(2)]
    cts = rng.integers(0, 1 << 62, size=(PB, PS, PL, N), dtype=np.uint64) % q
    nbytes = pts[0].nbytes
    macs = PG * PB * PS * PL * N

    ref = kernel_numpy.plain_mac(pts[0], cts, moduli)
    for t in (1, 2):
        if not np.array_equal(kernel_native.plain_mac(pts[0], cts, moduli, threads=t), ref):
            raise SystemExit(f"native plain_mac ({t} threads) disagrees with numpy")
    rows = [
        ("numpy path", _time(lambda i: kernel_numpy.plain_mac(pts[i], cts, moduli), 2, max(1, repeat // 2))),
        ("native, 1 thread", _time(lambda i: kernel_native.plain_mac(pts[i], cts, moduli, 1), 2, repeat)),
        ("native, 2 threads", _time(lambda i: kernel_native.plain_mac(pts[i], cts, moduli, 2), 2, repeat)),
    ]
    print(
        f"plain_mac G={PG} B={PB} S={PS} L={PL} N={N}: {nbytes / 2**20:.0f} MiB of plaintext residues per call, "
        f"{macs / 1e6:.1f}M multiply-accumulates, 2 distinct sets cycled"
    )
    print(f"{'kernel':36s} {'ms/call':>9s} {'GMAC/s':>8s} {'GB/s':>7s}")
    for name, sec in rows:
        print(f"{name:36s} {sec * 1e3:9.2f} {macs / sec / 1e9:8.2f} {nbytes / sec / 1e9:7.2f}")


def _bench_mac(blocks: int, repeat: int) -> None:
    """Time ``multiply_accumulate`` on n8192 blocks, then the GIL check, and print both."""
    rng = np.random.default_rng(1)
    data = [rng.integers(0, Q, size=(D, SIZE, 1, N), dtype=np.uint64) for _ in range(blocks)]
    w = rng.integers(-(1 << 15), 1 << 15, size=D, dtype=np.int64)
    moduli = (Q,)
    nbytes = data[0].nbytes
    macs = D * SIZE * N

    ref = kernel_numpy.multiply_accumulate(data[0], w, moduli)
    for t in (1, 2):
        if not np.array_equal(kernel_native.multiply_accumulate(data[0], w, moduli, threads=t), ref):
            raise SystemExit(f"native kernel ({t} threads) disagrees with numpy")

    def native(threads: int) -> Callable[[int], object]:
        return lambda b: kernel_native.multiply_accumulate(data[b], w, moduli, threads)

    rows = [
        ("numpy path", _time(lambda b: kernel_numpy.multiply_accumulate(data[b], w, moduli), blocks,
                             max(1, repeat // 2))),
        ("native, 1 thread", _time(native(1), blocks, repeat)),
        ("native, 2 threads", _time(native(2), blocks, repeat)),
        ("native 1 thread x 2 Python threads", _two_python_threads(native(1), blocks, repeat)),
    ]
    print(
        f"block d={D} size={SIZE} L=1 N={N}: {nbytes / 2**20:.0f} MiB, {TEMPLATES_PER_BLOCK} templates, "
        f"{blocks} distinct blocks cycled"
    )
    print(f"{'kernel':36s} {'ms/block':>9s} {'GMAC/s':>8s} {'GB/s':>7s} {'ms/1k':>7s} {'100k(25)':>9s} {'1M(245)':>9s}")
    for name, sec in rows:
        print(
            f"{name:36s} {sec * 1e3:9.2f} {macs / sec / 1e9:8.2f} {nbytes / sec / 1e9:7.2f} "
            f"{sec * 1e3 * 1000 / TEMPLATES_PER_BLOCK:7.3f} {25 * sec:8.2f}s {245 * sec:8.2f}s"
        )
    # GIL check on a block that stays in the last-level cache, so that RAM bandwidth cannot cap
    # the speed-up: with the GIL held during the call, two Python threads could not beat 1.0x.
    # Process CPU time over wall time is the sturdier sign (it does not depend on a quiet
    # memory bus): a thread waiting for the GIL sleeps, so a held GIL keeps it near 1.0.
    small = rng.integers(0, Q, size=(2048, SIZE, 1, 512), dtype=np.uint64)  # 16 MiB
    ws = rng.integers(-(1 << 15), 1 << 15, size=2048, dtype=np.int64)
    calls = 40

    def small_call(_: int) -> object:
        return kernel_native.multiply_accumulate(small, ws, moduli, 1)

    alone = _time(small_call, calls, repeat)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    paired = _two_python_threads(small_call, calls, repeat)
    busy = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    print(
        f"GIL check (16 MiB cache-resident block, 1 C thread per call): one Python thread {alone * 1e3:.3f} ms/call, "
        f"two Python threads {paired * 1e3:.3f} ms/call -> {alone / paired:.2f}x throughput; "
        f"CPU/wall {busy:.2f} (GIL held would give <= 1x and ~1.0)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the kernel comparison and print its tables.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        0 once the tables are printed.

    Raises:
        SystemExit: the native kernel is not built, or disagrees with numpy.
    """
    ap = argparse.ArgumentParser(prog="python -m pprm.bench.kernel",
                                 description="Benchmark the multiply-accumulate kernels on production-shaped blocks.")
    ap.add_argument("--blocks", type=int, default=4, help="distinct blocks to cycle through (64 MiB each)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--plain-only", action="store_true", help="only benchmark plain_mac")
    args = ap.parse_args(argv)

    if not kernel_native.available():
        raise SystemExit("native kernel not built: run `pip install -e .` first")
    if not args.plain_only:
        _bench_mac(args.blocks, args.repeat)
        print()
    bench_plain(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
