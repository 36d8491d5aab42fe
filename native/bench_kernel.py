"""Benchmark the multiply-accumulate kernels on production-shaped blocks.

Usage (from the repository root, with the extension built)::

    python native/bench_kernel.py [--blocks 4] [--repeat 5] [--plain-only]

Measures, on blocks of shape d=512, size=2, L=1, N=8192 (one n8192 block,
4096 templates): the numpy path, the native kernel with 1 and 2 threads,
and two Python threads each calling the native kernel with 1 thread at the
same time (which only runs in parallel if the call releases the GIL; shown
on production blocks, and on a cache-resident block where RAM bandwidth
cannot cap the speed-up).
Several distinct blocks are cycled so that every call streams from RAM, as
a real gallery larger than the last-level cache does. It prints seconds per
block, multiply-accumulates per second, GB/s of residues read, and the
extrapolation to 100k (25 blocks) and 1M (245 blocks) templates.

Then ``plain_mac`` (the blind profile's plaintext-times-ciphertext sums) at
its real shape, G=8, B=64, S=2, L=4, N=8192: 128 MiB of plaintext residues
per call, two distinct sets cycled so that every call streams them from RAM.
It prints ms per call for the numpy path and the native kernel with 1 and 2
threads, G multiply-accumulates per second, and GB/s of plaintext residues
read.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import tenseal.sealapi as seal

from pprm.matching import _native, kernel

__all__ = ["main"]

Q = 1152921504606830593
D, SIZE, N = 512, 2, 8192
TEMPLATES_PER_BLOCK = N // 2
# plain_mac's real shape: G giant steps of B baby-step plaintexts, S = 2, L = 4 primes.
PG, PB, PS, PL = 8, 64, 2, 4


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
    """Time ``plain_mac`` at its real shape and print a table."""
    moduli = tuple(m.value() for m in seal.CoeffModulus.Create(N, [60] * PL))
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, PL, 1)
    rng = np.random.default_rng(2)
    # Two distinct plaintext sets (2 x 128 MiB): more than the last-level cache, so every call reads RAM.
    pts = [rng.integers(0, 1 << 62, size=(PG, PB, PL, N), dtype=np.uint64) % q for _ in range(2)]
    cts = rng.integers(0, 1 << 62, size=(PB, PS, PL, N), dtype=np.uint64) % q
    nbytes = pts[0].nbytes
    macs = PG * PB * PS * PL * N

    ref = kernel._plain_mac_numpy(pts[0], cts, moduli)
    for t in (1, 2):
        if not np.array_equal(_native.plain_mac(pts[0], cts, moduli, threads=t), ref):
            raise SystemExit(f"native plain_mac ({t} threads) disagrees with numpy")
    rows = [
        ("numpy path", _time(lambda i: kernel._plain_mac_numpy(pts[i], cts, moduli), 2, max(1, repeat // 2))),
        ("native, 1 thread", _time(lambda i: _native.plain_mac(pts[i], cts, moduli, 1), 2, repeat)),
        ("native, 2 threads", _time(lambda i: _native.plain_mac(pts[i], cts, moduli, 2), 2, repeat)),
    ]
    print(
        f"plain_mac G={PG} B={PB} S={PS} L={PL} N={N}: {nbytes / 2**20:.0f} MiB of plaintext residues per call, "
        f"{macs / 1e6:.1f}M multiply-accumulates, 2 distinct sets cycled"
    )
    print(f"{'kernel':36s} {'ms/call':>9s} {'GMAC/s':>8s} {'GB/s':>7s}")
    for name, sec in rows:
        print(f"{name:36s} {sec * 1e3:9.2f} {macs / sec / 1e9:8.2f} {nbytes / sec / 1e9:7.2f}")


def main() -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4, help="distinct blocks to cycle through (64 MiB each)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--plain-only", action="store_true", help="only benchmark plain_mac")
    args = ap.parse_args()

    if not _native.available():
        raise SystemExit("native kernel not built: run `pip install -e .` first")
    if args.plain_only:
        bench_plain(args.repeat)
        return

    rng = np.random.default_rng(1)
    data = [rng.integers(0, Q, size=(D, SIZE, 1, N), dtype=np.uint64) for _ in range(args.blocks)]
    w = rng.integers(-(1 << 15), 1 << 15, size=D, dtype=np.int64)
    moduli = (Q,)
    nbytes = data[0].nbytes
    macs = D * SIZE * N

    ref = kernel._mac_numpy(data[0], w, moduli)
    for t in (1, 2):
        if not np.array_equal(_native.multiply_accumulate(data[0], w, moduli, threads=t), ref):
            raise SystemExit(f"native kernel ({t} threads) disagrees with numpy")

    rows = [
        ("numpy path", _time(lambda b: kernel._mac_numpy(data[b], w, moduli), args.blocks, max(1, args.repeat // 2))),
        (
            "native, 1 thread",
            _time(lambda b: _native.multiply_accumulate(data[b], w, moduli, 1), args.blocks, args.repeat),
        ),
        (
            "native, 2 threads",
            _time(lambda b: _native.multiply_accumulate(data[b], w, moduli, 2), args.blocks, args.repeat),
        ),
        (
            "native 1 thread x 2 Python threads",
            _two_python_threads(lambda b: _native.multiply_accumulate(data[b], w, moduli, 1), args.blocks, args.repeat),
        ),
    ]
    print(
        f"block d={D} size={SIZE} L=1 N={N}: {nbytes / 2**20:.0f} MiB, {TEMPLATES_PER_BLOCK} templates, "
        f"{args.blocks} distinct blocks cycled"
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
        return _native.multiply_accumulate(small, ws, moduli, 1)

    alone = _time(small_call, calls, args.repeat)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    paired = _two_python_threads(small_call, calls, args.repeat)
    busy = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    print(
        f"GIL check (16 MiB cache-resident block, 1 C thread per call): one Python thread {alone * 1e3:.3f} ms/call, "
        f"two Python threads {paired * 1e3:.3f} ms/call -> {alone / paired:.2f}x throughput; "
        f"CPU/wall {busy:.2f} (GIL held would give <= 1x and ~1.0)"
    )
    print()
    bench_plain(args.repeat)


if __name__ == "__main__":
    main()
