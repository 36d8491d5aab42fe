"""What the key separation costs: the sealed query in one process against the split layout.

The split layout is the production one (docs/DESIGN.md, "Key separation"):
the front matches, the key service (its own process, over a unix socket)
verifies the query again, decides the masked answer and mints the tokens.
``extra_info`` records both medians from the same run and their ratio
(target: the split costs at most 15% at 100k), and the bytes handed to the
key service per template. Answers to planted mates are checked to be hits
in both layouts.
"""

from __future__ import annotations

from pprm.bench.report import load_average
from pprm.bench.split import measure_split


def test_split_overhead(benchmark, setups, size, bench_params, bench_rounds):
    sealed = setups(size)
    result = benchmark.pedantic(measure_split, args=(sealed, bench_rounds), rounds=1, iterations=1)
    benchmark.extra_info.update(params=bench_params, load_average=load_average(), **result)
    print(f"\nsplit at n={result['n']}: in-process {result['in_process_ms']:.1f} ms, "
          f"split {result['split_ms']:.1f} ms, overhead {100 * result['overhead']:+.1f}% "
          f"({result['key_service_bytes_per_template']:.1f} B/template to the key service)")
