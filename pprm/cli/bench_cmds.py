"""``pprm bench``: the sealed and the blind matcher on synthetic galleries, as tables, JSON or a figure.

The benchmark itself is :mod:`pprm.bench`; it is imported only when the verb
runs, so the other verbs do not pay for its machinery at start-up, and
matplotlib (the ``plot`` extra) only when ``--plot`` is given.

* ``--profile sealed`` (the default), ``blind`` or ``both`` (one after the
  other; the default when ``--out`` or ``--plot`` is given): the table of
  each profile run, or with ``--json`` the run as one ``pprm.bench/1``
  document (:mod:`pprm.bench.document`), which carries each profile's whole
  result;
* ``--out FILE.json`` writes that document, ``--plot FILE.png`` the log-log
  figure of time per template (:mod:`pprm.bench.plot`); ``--plot`` with
  ``--from FILE.json`` draws an earlier ``--out`` file without running.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from typing import Any

from pprm.cli.common import EXIT_OK, AddVerb, AtomicOutput, Verbs, emit, int_at_least, sizes, stderr_is_tty
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.profile import PROFILES, Profile

__all__ = ["VERBS"]

# --profile's value that runs both profiles, one after the other.
BOTH = "both"
# Gallery sizes when --sizes is not given.
DEFAULT_SIZES = (10000, 100000)


def _status(message: str) -> None:
    print(f"pprm bench: {message}", file=sys.stderr, flush=True)


def _profiles(args: argparse.Namespace) -> tuple[Profile, ...]:
    """The profiles to run: ``--profile``, else both when a file is written, else sealed."""
    if args.profile == BOTH or (args.profile is None and (args.out is not None or args.plot is not None)):
        return PROFILES
    return ("blind",) if args.profile == "blind" else ("sealed",)


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the option combinations argparse cannot express (a usage error)."""
    if args.from_file is not None:
        if args.plot is None:
            p.error("--from draws an earlier --out file: give --plot FILE.png with it")
        # --sizes has a list as its default: given, it is another list object.
        sizes_given = args.sizes if args.sizes is not p.get_default("sizes") else None
        given = [o for o, v in (("--out", args.out), ("--profile", args.profile), ("--sizes", sizes_given),
                                ("--blind-sizes", args.blind_sizes), ("--params", args.params),
                                ("--blind-params", args.blind_params)) if v is not None]
        if given:
            p.error(f"--from plots without running: {given[0]} does not go with it")
        return
    if len(_profiles(args)) == 1 and (args.blind_sizes is not None or args.blind_params is not None):
        p.error("--blind-sizes and --blind-params are for runs of both profiles (--profile both, --out or --plot)")


def _plot_from(args: argparse.Namespace) -> int:
    """``pprm bench --plot FILE.png --from FILE.json``."""
    from pprm.bench.document import load_document
    from pprm.bench.plot import per_template_png, require_matplotlib

    require_matplotlib()
    document = load_document(args.from_file)
    with AtomicOutput(args.plot) as plot_out:
        plot_out.write(per_template_png(document))
        plot_out.commit()
    emit(args, {"plot": plot_out.path, "from": args.from_file},
         f"pprm bench: figure {args.plot} drawn from {args.from_file}")
    return EXIT_OK


def _sizes(args: argparse.Namespace) -> list[int]:
    return list(args.sizes)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        return _plot_from(args)
    with contextlib.ExitStack() as stack:
        # Before any measuring: a missing plot extra or an unwritable output
        # fails now, not after minutes of benchmarking.
        plot_out = None
        if args.plot is not None:
            from pprm.bench.plot import require_matplotlib

            require_matplotlib()
            plot_out = stack.enter_context(AtomicOutput(args.plot))
        out = stack.enter_context(AtomicOutput(args.out)) if args.out is not None else None
        document = _run_document(args, _profiles(args))
        return _write(args, document, out, plot_out)


def _run_document(args: argparse.Namespace, profiles: tuple[Profile, ...]) -> dict[str, Any]:
    """Run ``profiles`` into one ``pprm.bench/1`` document."""
    from pprm.bench.document import ProfileRun, run_document

    first = _sizes(args)
    runs = []
    for profile in profiles:
        if profile == "sealed":
            runs.append(ProfileRun("sealed", tuple(first),
                                   param_sets.DEFAULT_PARAMS if args.params is None else args.params))
        else:
            both = len(profiles) > 1
            own = args.blind_params if both else args.params
            blind_sizes = args.blind_sizes if both and args.blind_sizes is not None else first
            runs.append(ProfileRun("blind", tuple(blind_sizes),
                                   blind_param_sets.DEFAULT_BLIND_PARAMS if own is None else own))
    return run_document(runs, args.repeats, progress=_status if stderr_is_tty() else None,
                        allow_insecure=args.allow_insecure)


def _write(args: argparse.Namespace, document: dict[str, Any], out: AtomicOutput | None,
           plot_out: AtomicOutput | None) -> int:
    """Write the document and the figure, then print the tables (with ``--json``, the document)."""
    from pprm.bench.blind import format_blind_table
    from pprm.bench.document import document_bytes
    from pprm.bench.sealed import format_table

    # The document first: a figure that fails to draw must not lose the run.
    if out is not None:
        out.write(document_bytes(document))
        out.commit()
    if plot_out is not None:
        from pprm.bench.plot import per_template_png

        plot_out.write(per_template_png(document))
        plot_out.commit()
    tables = [(format_table if name == "sealed" else format_blind_table)(entry["result"])
              for name, entry in document["profiles"].items()]
    written = "".join(f"\npprm bench: wrote {o.path}" for o in (out, plot_out) if o is not None)
    emit(args, document, "\n\n".join(tables) + ("\n" + written if written else ""))
    return EXIT_OK


def _add_bench(verbs: Verbs) -> None:
    p = verbs.add("bench", _cmd_bench, "benchmark the sealed and blind matchers on synthetic galleries")
    p.add_argument("--profile", choices=(*PROFILES, BOTH), default=None,
                   help="profile to benchmark, or both one after the other (default sealed; both when --out or "
                        "--plot is given)")
    p.add_argument("--sizes", type=sizes, default=list(DEFAULT_SIZES),
                   help=f"gallery sizes (default {','.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--blind-sizes", type=sizes, default=None,
                   help="with both profiles: the blind profile's gallery sizes (default --sizes; its database "
                        "build makes large sizes slow)")
    p.add_argument("--params", default=None,
                   help=f"parameter set of the profile; with both profiles, the sealed one (default "
                        f"{param_sets.DEFAULT_PARAMS} for sealed, {blind_param_sets.DEFAULT_BLIND_PARAMS} for blind)")
    p.add_argument("--blind-params", default=None,
                   help="with both profiles: the blind parameter set "
                        f"(default {blind_param_sets.DEFAULT_BLIND_PARAMS})")
    p.add_argument("--repeats", type=int_at_least(1), default=3, help="queries timed per size (default 3)")
    p.add_argument("--allow-insecure", action="store_true",
                   help="accept INSECURE* parameter sets (quick smoke runs; the figures mean nothing)")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="write the run as one pprm.bench/1 JSON document: the machine, and per profile and size "
                        "the responder time, time per template, numpy G @ q in the same run, ratio and bytes")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help='draw time per template against gallery size, log-log: sealed, blind and numpy G @ q '
                        '(needs matplotlib: pip install "pprm[plot]")')
    p.add_argument("--from", dest="from_file", default=None, metavar="FILE.json",
                   help="with --plot: draw an earlier --out file instead of running the benchmark")
    p.set_defaults(check=functools.partial(_check, p))


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {"bench": _add_bench}
