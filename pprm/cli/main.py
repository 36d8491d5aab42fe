"""The ``pprm`` command: the parser, the dispatch to a verb, and errors mapped to exit codes.

Each verb is a thin wrapper over the Python API (:mod:`pprm.node`), defined
in the module of its theme: :mod:`pprm.cli.state_cmds`,
:mod:`pprm.cli.flow_cmds`, :mod:`pprm.cli.keys_cmds`, :mod:`pprm.cli.face_cmds`,
:mod:`pprm.cli.net_cmds`, :mod:`pprm.cli.bench_cmds`,
:mod:`pprm.cli.demo_cmds`, :mod:`pprm.cli.keyservice_cmds` and
:mod:`pprm.cli.prepare_cmds`. The exit codes are listed in
:data:`pprm.cli.common.EXIT_CODES` and at the end of ``pprm --help``; an
expected error is one ``pprm: error:`` line on stderr. Nothing here ever
prints a secret key, a template or a score.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pprm
from pprm.cli import (
    bench_cmds,
    demo_cmds,
    face_cmds,
    flow_cmds,
    keys_cmds,
    keyservice_cmds,
    net_cmds,
    policy_cmds,
    prepare_cmds,
    state_cmds,
)
from pprm.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    AddVerb,
    Verbs,
    exit_codes_epilog,
)
from pprm.errors import PprmError

__all__ = ["main", "build_parser", "VERB_ORDER"]

# The verbs in the order `pprm --help` lists them: a state's life, then a
# search, then the tools.
VERB_ORDER = ("init", "card", "trust", "enroll", "embed", "remove", "prepare", "query", "answer", "open",
              "follow-up", "resolve", "keys", "info", "policy", "audit", "bench", "demo", "serve", "route", "ask",
              "keyservice")


def _verbs() -> dict[str, AddVerb]:
    found: dict[str, AddVerb] = {}
    for module in (state_cmds, policy_cmds, flow_cmds, keys_cmds, face_cmds, net_cmds, bench_cmds, demo_cmds,
                   keyservice_cmds, prepare_cmds):
        found.update(module.VERBS)
    return found


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pprm`` command.

    Returns:
        A parser whose namespaces carry the verb's handler as ``func`` (and,
        for verbs with option combinations argparse cannot express, a
        ``check`` that refuses them as usage errors).

    Raises:
        RuntimeError: a verb module adds a verb missing from
            :data:`VERB_ORDER`, or one listed there has no module.
    """
    parser = argparse.ArgumentParser(
        prog="pprm", description="Privacy-preserving face matching between states (Prüm II style).",
        epilog=exit_codes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pprm {pprm.__version__}")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="print one JSON value on stdout")
    verbs = Verbs(parser.add_subparsers(dest="verb", required=True, metavar="VERB"), js)
    adders = _verbs()
    if set(adders) != set(VERB_ORDER):
        raise RuntimeError(f"verbs without a place in VERB_ORDER or a module: {sorted(set(adders) ^ set(VERB_ORDER))}")
    for name in VERB_ORDER:
        adders[name](verbs)
    return parser


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename else what


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pprm`` command.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code, one of :data:`pprm.cli.common.EXIT_CODES`: 0 ok,
        1 error, 2 usage, 3 demo mismatch, 4 ``ask`` partial, 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "check", None) is not None:  # option combinations argparse cannot express
            args.check(args)
    except SystemExit as exc:  # usage errors, --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_USAGE
    try:
        return int(args.func(args))
    except PprmError as exc:
        message = _one_line(str(exc)) or type(exc).__name__
    except OSError as exc:
        message = _one_line(_os_message(exc))
    except KeyboardInterrupt:
        print("pprm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"pprm: error: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover - `python -m pprm.cli.main`
    sys.exit(main())
