"""``pprm bench``: the sealed or the blind matcher on synthetic galleries, as a table or JSON.

The benchmark itself is :mod:`pprm.bench`; it is imported only when the verb
runs, so the other verbs do not pay for its machinery at start-up.
"""

from __future__ import annotations

import argparse
import json
import sys

from pprm.cli.common import EXIT_OK, AddVerb, Verbs, int_at_least, sizes, stderr_is_tty
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.profile import PROFILES

__all__ = ["VERBS"]


def _status(message: str) -> None:
    print(f"pprm bench: {message}", file=sys.stderr, flush=True)


def _cmd_bench(args: argparse.Namespace) -> int:
    progress = _status if stderr_is_tty() else None
    if args.profile == "blind":
        from pprm.bench.blind import format_blind_table, run_blind_bench

        params = blind_param_sets.DEFAULT_BLIND_PARAMS if args.params is None else args.params
        blind = run_blind_bench(args.sizes, params, args.repeats, progress=progress,
                                allow_insecure=args.allow_insecure)
        print(json.dumps(blind, indent=1) if args.json else format_blind_table(blind))
        return EXIT_OK
    from pprm.bench.sealed import format_table, run_bench

    result = run_bench(args.sizes, param_sets.DEFAULT_PARAMS if args.params is None else args.params, args.repeats,
                       progress=progress, allow_insecure=args.allow_insecure)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return EXIT_OK


def _add_bench(verbs: Verbs) -> None:
    p = verbs.add("bench", _cmd_bench, "benchmark the sealed or blind matcher on synthetic galleries")
    p.add_argument("--profile", choices=PROFILES, default="sealed",
                   help="profile to benchmark (default sealed)")
    p.add_argument("--sizes", type=sizes, default=[10000, 100000], help="gallery sizes (default 10000,100000)")
    p.add_argument("--params", default=None,
                   help=f"parameter set of the profile (default {param_sets.DEFAULT_PARAMS} for sealed, "
                        f"{blind_param_sets.DEFAULT_BLIND_PARAMS} for blind)")
    p.add_argument("--repeats", type=int_at_least(1), default=3, help="queries timed per size (default 3)")
    p.add_argument("--allow-insecure", action="store_true",
                   help="accept INSECURE* parameter sets (quick smoke runs; the figures mean nothing)")


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {"bench": _add_bench}
