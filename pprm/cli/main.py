"""The ``pprm`` command: the parser, the dispatch to a verb, and errors mapped to exit codes.

Each verb is a thin wrapper over the Python API (:mod:`pprm.node`), defined
in the module of its theme: :mod:`pprm.cli.state_cmds`,
:mod:`pprm.cli.flow_cmds`, :mod:`pprm.cli.keys_cmds`, :mod:`pprm.cli.face_cmds`,
:mod:`pprm.cli.net_cmds`, :mod:`pprm.cli.bench_cmds`,
:mod:`pprm.cli.demo_cmds`, :mod:`pprm.cli.keyservice_cmds` and
:mod:`pprm.cli.prepare_cmds`. The exit codes are listed in
:data:`pprm.cli.common.EXIT_CODES` and at the end of ``pprm --help``; an
expected error is one ``pprm: error:`` line on stderr, and with ``--json``
also the error object of :mod:`pprm.cli.report` on stdout. Nothing here
ever prints a secret key, a template or a score.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

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
    report,
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


class _UsageExit(SystemExit):
    """argparse's exit on a usage error, carrying its message for the ``--json`` error object."""

    def __init__(self, code: int | str | None, message: str) -> None:
        super().__init__(code)
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors keep their message (for ``--json``)."""

    def error(self, message: str) -> NoReturn:
        try:
            super().error(message)
        except SystemExit as exc:
            raise _UsageExit(exc.code, f"{self.prog}: {message}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pprm`` command.

    Returns:
        A parser whose namespaces carry the verb's handler as ``func``, the
        format tag of its JSON output as ``json_format`` (for verbs taking
        ``--json``) and, for verbs with option combinations argparse cannot
        express, a ``check`` that refuses them as usage errors.

    Raises:
        RuntimeError: a verb module adds a verb missing from
            :data:`VERB_ORDER`, or one listed there has no module.
    """
    parser: argparse.ArgumentParser = _Parser(
        prog="pprm", description="Privacy-preserving face matching between states (Prüm II style).",
        epilog=exit_codes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pprm {pprm.__version__}")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true",
                    help="print one JSON object on stdout, tagged with its format (docs/JSON.md); a failure "
                         "prints {\"ok\": false, \"error\": {\"code\", \"message\"}}")
    verbs = Verbs(parser.add_subparsers(dest="verb", required=True, metavar="VERB"), js)
    adders = _verbs()
    if set(adders) != set(VERB_ORDER):
        raise RuntimeError(f"verbs without a place in VERB_ORDER or a module: {sorted(set(adders) ^ set(VERB_ORDER))}")
    for name in VERB_ORDER:
        adders[name](verbs)
    return parser


def _json_requested(argv: Sequence[str]) -> bool:
    # Before parsing succeeds there is no namespace to ask; "--json" after "--" is an operand.
    args = list(argv)
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _failed(exc: BaseException, as_json: bool, code: int) -> int:
    """Report a failure: the JSON error object on stdout under --json, one line on stderr."""
    if as_json:
        error = (report.INTERRUPTED, "interrupted") if isinstance(exc, KeyboardInterrupt) else exc
        print(json.dumps(report.error_envelope(error), indent=1, ensure_ascii=False))
    if isinstance(exc, KeyboardInterrupt):
        print("pprm: interrupted", file=sys.stderr)
    else:
        report.error_line(exc)
    return code


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail on the closed pipe again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _run(argv: Sequence[str]) -> int:
    as_json = _json_requested(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "check", None) is not None:  # option combinations argparse cannot express
            args.check(args)
    except _UsageExit as exc:  # argparse printed the usage and the message on stderr
        if as_json:
            print(json.dumps(report.error_envelope((report.USAGE, exc.message)), indent=1, ensure_ascii=False))
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args))
    except BrokenPipeError:
        raise  # the reader went away: main() exits quietly
    except (PprmError, OSError) as exc:
        return _failed(exc, as_json, EXIT_ERROR)
    except KeyboardInterrupt as exc:
        return _failed(exc, as_json, EXIT_INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pprm`` command.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code, one of :data:`pprm.cli.common.EXIT_CODES`: 0 ok (also
        when stdout was closed early, as by ``| head``), 1 error, 2 usage,
        3 demo mismatch, 4 ``ask`` partial, 130 interrupted. With ``--json``
        a failure also prints ``{"ok": false, "error": {"code", "message"}}``
        on stdout (:mod:`pprm.cli.report`).
    """
    code = EXIT_OK
    try:
        code = _run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # a reader gone (| head) shows here, not in the flush at exit
    except BrokenPipeError:
        # The standard way (Python's signal docs): the reader is gone, so
        # neither this report nor the flush at exit may complain about it.
        _quiet_stdout()
    return code


if __name__ == "__main__":  # pragma: no cover - `python -m pprm.cli.main`
    sys.exit(main())
