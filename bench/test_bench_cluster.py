"""Sharded sealed matching: one gallery on 1 and 2 local workers, and a projection to 30M templates.

For each worker count the benchmark records the one-off sync (blocks sent to
the workers), the time of a full sharded query (fan-out, per-worker kernel and
masking, gathering), the key service's decryption of the result (which stays
on the owner's machine), the bytes a query moves (to the workers, and back),
and the memory the workers hold per template. It checks on the side that the
sharded decisions equal the single process's for a planted mate.

From the 1-worker figures it projects a 3*10**7-template gallery on N
machines of C cores: matching time scales with templates / (N*C), the key
service's decryption and the answers' bytes with the number of blocks, and
memory with templates. The projection is printed and kept in ``extra_info``.

Environment: ``PPRM_CLUSTER_SIZE`` (default 100000), ``PPRM_BENCH_PARAMS``
(default the library's sealed set), ``PPRM_BENCH_ROUNDS`` (default 5).
"""

from __future__ import annotations

import os
import pickle
import statistics
import time

import pytest

from pprm.bench.setup import build_setup
from pprm.cluster import ShardedMatcher, connect
from pprm.cluster.shards import ShardSet
from pprm.crypto import params as param_sets
from pprm.matching.decide import SealedDecider
from pprm.node.keyservice import KeyService
from pprm.synthetic import mate_probe

pytest.importorskip("distributed")

SIZE = int(os.environ.get("PPRM_CLUSTER_SIZE", "100000"))
PARAMS = os.environ.get("PPRM_BENCH_PARAMS", param_sets.DEFAULT_PARAMS)
ROUNDS = int(os.environ.get("PPRM_BENCH_ROUNDS", "5"))
TARGET = 30_000_000
# Machines for the projection: 2-core VMs like this one, and 32-core servers.
MACHINES = ((2, 8), (2, 64), (32, 4), (32, 16))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = build_setup(SIZE, PARAMS, allow_insecure=PARAMS.startswith("INSECURE"),
                    root=str(tmp_path_factory.mktemp("cluster-bench")))
    yield s
    s.close()


def _measure(setup, workers: int) -> dict[str, float]:
    st = setup.responder
    _kind, probe = setup.probe(0, seed=3)
    planted = mate_probe(setup.gallery, 123, seed=4)
    sent_bytes: list[int] = []
    original = ShardSet.call

    def counting(self, worker, method, *args):
        if method == "match":
            sent_bytes.append(len(pickle.dumps(args)))
        return original(self, worker, method, *args)

    with connect(f"local:{workers}") as handle:
        sharded = ShardedMatcher(handle, st.sealed_shard_spec())
        t = time.perf_counter()
        sharded.sync(st.gallery())
        sync_s = time.perf_counter() - t
        sharded.match(probe, st.config.threshold)  # warm: SEAL contexts, page cache
        times = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            result = sharded.match(probe, st.config.threshold)
            times.append(time.perf_counter() - t)
        ShardSet.call = counting  # type: ignore[method-assign]
        try:
            result = sharded.match(planted, st.config.threshold)
        finally:
            ShardSet.call = original  # type: ignore[method-assign]
        held = sum(d["bytes"] for d in sharded.describe().values())
    ks = KeyService(st)
    decider = SealedDecider(st.ctx, ks._sk, st.gallery())
    t = time.perf_counter()
    hits = decider.hits(result)
    decrypt_s = time.perf_counter() - t
    single = decider.hits(st.matcher().match(planted, st.config.threshold))
    assert sorted(hits) == sorted(single) and hits, "sharded and single-process decisions differ"
    blocks = len(st.gallery().index.blocks)
    return {"workers": workers, "sync_s": sync_s, "query_ms": 1e3 * statistics.median(times),
            "query_ms_min": 1e3 * min(times), "decrypt_ms": 1e3 * decrypt_s, "blocks": blocks,
            "bytes_to_workers": sum(sent_bytes), "bytes_back": sum(len(c) for c in result.ciphertexts),
            "worker_bytes_per_template": held / SIZE}


def _projection(one: dict[str, float], cores_measured: int) -> list[dict[str, float]]:
    p = param_sets.get(PARAMS, allow_insecure=PARAMS.startswith("INSECURE"))
    per_block = p.templates_per_block
    blocks = -(-TARGET // per_block)
    # Core-seconds per template, from the 1-worker run (all cores of this machine).
    match_core_s = one["query_ms"] / 1e3 * cores_measured / SIZE
    decrypt_per_block = one["decrypt_ms"] / 1e3 / one["blocks"]
    back_per_block = one["bytes_back"] / one["blocks"]
    rows = []
    for cores, machines in MACHINES:
        match_s = TARGET * match_core_s / (cores * machines)
        rows.append({"cores": cores, "machines": machines, "blocks": blocks,
                     "match_s": match_s, "decrypt_s": blocks * decrypt_per_block,
                     "answer_MB": blocks * back_per_block / 1e6,
                     "ram_GB_per_machine": TARGET * one["worker_bytes_per_template"] / machines / 1e9})
    return rows


def test_cluster_one_and_two_workers(benchmark, setup):
    cores = os.cpu_count() or 1
    runs = [_measure(setup, 1), _measure(setup, 2)]
    single_ms = benchmark.pedantic(lambda: setup.responder.matcher().match(setup.probe(0, seed=3)[1], 0.4),
                                   rounds=ROUNDS, iterations=1)
    del single_ms
    proj = _projection(runs[0], cores)
    benchmark.extra_info.update({"size": SIZE, "params": PARAMS, "cores": cores, "runs": runs, "projection": proj})
    lines = [f"sharded sealed query, {SIZE} templates, {PARAMS}, {cores} cores:"]
    for r in runs:
        lines.append(f"  {r['workers']} worker(s): query {r['query_ms']:.0f} ms (min {r['query_ms_min']:.0f}), "
                     f"key-service decrypt {r['decrypt_ms']:.0f} ms, sync {r['sync_s']:.1f} s, "
                     f"{r['bytes_to_workers'] / 1e3:.1f} kB to workers and {r['bytes_back'] / 1e6:.2f} MB back "
                     f"per query, {r['worker_bytes_per_template']:.0f} B per template on workers")
    lines.append(f"projection to {TARGET:,} templates:")
    for r in proj:
        lines.append(f"  {r['machines']} x {r['cores']} cores: match {r['match_s']:.2f} s + decrypt "
                     f"{r['decrypt_s']:.2f} s, answer {r['answer_MB']:.0f} MB to the key service, "
                     f"{r['ram_GB_per_machine']:.0f} GB per machine")
    print("\n" + "\n".join(lines))
