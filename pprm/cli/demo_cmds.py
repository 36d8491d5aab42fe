"""``pprm demo``: several states end to end on synthetic data, every answer checked (:mod:`pprm.cli.demo`)."""

from __future__ import annotations

import argparse

from pprm.cli import report
from pprm.cli.common import EXIT_MISMATCH, EXIT_OK, AddVerb, Verbs, emit, int_at_least, int_between
from pprm.cli.demo import DEMO_STATES, MIN_GALLERY, format_report, run_demo
from pprm.cli.progress import StagedProgress
from pprm.crypto import params as param_sets

__all__ = ["VERBS"]


def _cmd_demo(args: argparse.Namespace) -> int:
    with StagedProgress() as staged:
        result = run_demo(args.dir, states=args.states, gallery=args.gallery, seed=args.seed,
                          params=args.params, progress=staged if staged.enabled else None)
    body = {k: v for k, v in result.items() if k != "ok"}
    if result["ok"]:
        emit(args, body, format_report(result))
        return EXIT_OK
    wrong = sum(not q["ok"] for q in result["queries"])
    emit(args, body, format_report(result), ok=False,
         error=(report.MISMATCH, f"{wrong} of {len(result['queries'])} answer(s) disagree with the plaintext truth"))
    return EXIT_MISMATCH


def _add_demo(verbs: Verbs) -> None:
    p = verbs.add("demo", _cmd_demo, "run several states end to end on synthetic data and check every answer")
    p.add_argument("--states", type=int_between(2, len(DEMO_STATES)), default=3,
                   help=f"number of states, 2..{len(DEMO_STATES)} (default 3)")
    p.add_argument("--gallery", type=int_at_least(MIN_GALLERY), default=5000,
                   help="synthetic templates per state (default 5000)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of all synthetic data (default 0)")
    p.add_argument("--params", default=param_sets.DEFAULT_PARAMS,
                   help=f"parameter set (default {param_sets.DEFAULT_PARAMS}; INSECURE-sealed-n1024 is "
                        "allowed for the demo's throwaway states)")
    p.add_argument("--dir", default=None, help="keep the state directories here (default: a temporary directory)")


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {"demo": _add_demo}
