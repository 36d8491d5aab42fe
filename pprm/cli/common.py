"""What every verb module of the ``pprm`` command shares.

* the exit codes (:data:`EXIT_CODES`, also printed at the end of
  ``pprm --help``);
* :class:`Verbs`, which adds a verb to the parser with its handler;
* the argument types argparse calls (:func:`int_at_least`, :func:`sizes`,
  :func:`seconds_up_to`, :func:`state_codes`): a bad value is a usage error;
* reading inputs and writing outputs: :func:`read_bytes`, :func:`load_npy`,
  :func:`read_refs`, :class:`AtomicOutput`, :func:`refuse_overwriting_inputs`
  and :func:`emit` (which prints the JSON vocabulary of :mod:`pprm.cli.report`).

Only the standard library, numpy, :mod:`pprm.errors` and
:mod:`pprm.cli.report` are imported here, so every verb module may import
this one and it imports none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any, NamedTuple, TypeVar

import numpy as np

from pprm.cli import report
from pprm.errors import TemplateError

__all__ = [
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_MISMATCH",
    "EXIT_PARTIAL",
    "EXIT_INTERRUPTED",
    "EXIT_CODES",
    "ExitCode",
    "exit_codes_epilog",
    "Handler",
    "Verbs",
    "AddVerb",
    "int_at_least",
    "int_between",
    "sizes",
    "seconds_up_to",
    "state_codes",
    "read_bytes",
    "read_utf8",
    "load_npy",
    "read_refs",
    "AtomicOutput",
    "same_file",
    "refuse_overwriting_inputs",
    "stderr_is_tty",
    "emit",
]


_N = TypeVar("_N", int, float)


# -- exit codes ---------------------------------------------------------------------

class ExitCode(NamedTuple):
    """One exit code of the ``pprm`` command.

    Attributes:
        code: the process exit status.
        name: its short name, as listed by ``pprm --help``.
        meaning: when the command exits with it.
    """

    code: int
    name: str
    meaning: str


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3
EXIT_PARTIAL = 4
# 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130

EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EXIT_OK, "ok", "success; for answer, also a refusal by policy (signed, logged and written like an "
                            "answer); for resolve, also a blind follow-up refused as not a hit (signed, logged "
                            "and written); also when stdout is closed before the report is printed whole "
                            "(pprm ... | head): the rest is dropped silently, the work was done"),
    ExitCode(EXIT_ERROR, "error", "an expected error: one 'pprm: error:' line on stderr (with --json, also "
                                  "{\"ok\": false, \"error\": {\"code\", \"message\"}} on stdout), no state "
                                  "change; for open, also a peer's signed refusal, which is recorded"),
    ExitCode(EXIT_USAGE, "usage", "a usage error: unknown verb, missing or malformed arguments, options that do "
                                  "not go together, an output file that is one of the inputs"),
    ExitCode(EXIT_MISMATCH, "mismatch", "pprm demo found a disagreement with the plaintext truth"),
    ExitCode(EXIT_PARTIAL, "partial", "pprm ask: at least one peer could not be asked to the end (unreachable, "
                                      "timed out, or a reply outside the protocol); distinct from 1 (nothing "
                                      "sent)"),
    ExitCode(EXIT_INTERRUPTED, "interrupted", "stopped by Ctrl-C (SIGINT): 'pprm: interrupted' on stderr"),
)

# The epilog is laid out here, not by argparse, so that it reads the same at any terminal width.
_EPILOG_WIDTH = 79


def exit_codes_epilog() -> str:
    """The exit codes as the text at the end of ``pprm --help``.

    Returns:
        ``exit codes:`` and one entry per code, wrapped to 79 columns.
    """
    name_width = max(len(e.name) for e in EXIT_CODES)
    lead = f"  {'':<3}  {'':<{name_width}}  "
    lines = ["exit codes:"]
    for e in EXIT_CODES:
        first = f"  {e.code:<3}  {e.name:<{name_width}}  "
        lines.extend(textwrap.wrap(e.meaning, _EPILOG_WIDTH, initial_indent=first, subsequent_indent=lead))
    lines.append("")
    lines.append("Reporting verbs take --json for one JSON object on stdout, tagged \"format\": \"pprm.VERB/1\" "
                 "(docs/JSON.md). Nothing ever prints a secret key, a template or a score.")
    return "\n".join(lines[:-1] + textwrap.wrap(lines[-1], _EPILOG_WIDTH))


# -- adding verbs -----------------------------------------------------------------------

# A verb's handler: the parsed arguments in, the exit code out.
Handler = Callable[[argparse.Namespace], int]


class Verbs:
    """Adds verbs (sub-commands) to a parser; each verb's namespace carries its handler as ``func``.

    Args:
        sub: the subparsers action the verbs are added to.
        json_parent: a parser holding only ``--json``, added to the verbs
            that report.
        path: the verbs above these (``("audit",)`` for ``audit verify``),
            for the format tag of their JSON output.
    """

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 json_parent: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
        self._sub = sub
        self._json = json_parent
        self._path = path

    def __repr__(self) -> str:
        return f"Verbs({sorted(self._sub.choices)!r})"

    def add(self, name: str, func: Handler, help_: str, *, json_out: bool = True) -> argparse.ArgumentParser:
        """Add one verb.

        Args:
            name: the verb, e.g. ``init``.
            func: its handler.
            help_: one line, shown in the verb list and as its description.
            json_out: whether the verb takes ``--json``.

        Returns:
            The verb's parser, for its arguments; with ``json_out`` its
            namespace carries the format tag of its output as ``json_format``
            (:func:`pprm.cli.report.format_tag`).
        """
        p = self._sub.add_parser(name, help=help_, description=help_, parents=[self._json] if json_out else [])
        p.set_defaults(func=func)
        if json_out:
            p.set_defaults(json_format=report.format_tag(*self._path, name))
        return p

    def group(self, name: str, help_: str, *, dest: str, metavar: str) -> Verbs:
        """Add a verb whose own verbs are required (``pprm audit verify``).

        Args:
            name: the verb, e.g. ``audit``.
            help_: one line, shown in the verb list and as its description.
            dest: the namespace attribute naming the chosen sub-verb.
            metavar: how usage lines show the sub-verb, e.g. ``ACTION``.

        Returns:
            A :class:`Verbs` that adds the sub-verbs.
        """
        p = self._sub.add_parser(name, help=help_, description=help_)
        return Verbs(p.add_subparsers(dest=dest, required=True, metavar=metavar), self._json, (*self._path, name))


# What each verb module lists in its VERBS: one function per verb, adding it and its arguments.
AddVerb = Callable[[Verbs], None]


# -- argument types ---------------------------------------------------------------------------

def _number(convert: Callable[[str], _N], not_a_number: Callable[[str], str], accept: Callable[[_N], bool],
            out_of_range: str) -> Callable[[str], _N]:
    """An argparse type: ``convert(text)``, refused with one line when it fails or ``accept`` says no."""
    def parse(text: str) -> _N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_number(text)) from None
        if not accept(value):
            raise argparse.ArgumentTypeError(out_of_range)
        return value
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``.

    Args:
        low: the smallest value accepted.

    Returns:
        The parsing function.
    """
    return _number(int, lambda text: f"{text!r} is not an integer", lambda v: v >= low, f"must be at least {low}")


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``.

    Args:
        low: the smallest value accepted.
        high: the largest value accepted.

    Returns:
        The parsing function.
    """
    return _number(int, lambda text: f"{text!r} is not an integer", lambda v: low <= v <= high,
                   f"must be from {low} to {high}")


def sizes(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers (gallery sizes).

    Args:
        text: e.g. ``10000,100000``.

    Returns:
        The sizes, in the order given.

    Raises:
        argparse.ArgumentTypeError: not integers, none, or one below 1.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError("sizes must be comma-separated integers, e.g. 10000,100000") from None
    if not values or any(s < 1 for s in values):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return values


def seconds_up_to(high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds above 0 and at most ``high``.

    Args:
        high: the largest value accepted.

    Returns:
        The parsing function.
    """
    return _number(float, lambda _text: "a number of seconds", lambda v: 0 < v <= high,
                   f"between 0 and {high:g} seconds")


def state_codes(text: str) -> list[str]:
    """An argparse type: comma-separated state codes.

    Args:
        text: e.g. ``DE,HU``.

    Returns:
        The codes, stripped, empty entries dropped.

    Raises:
        argparse.ArgumentTypeError: no code at all.
    """
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise argparse.ArgumentTypeError("name at least one state, e.g. DE,HU")
    return codes


# -- inputs -------------------------------------------------------------------------------------

def read_bytes(path: str) -> bytes:
    """A message or card file.

    Args:
        path: the file; ``-`` reads stdin.

    Returns:
        Its bytes.

    Raises:
        OSError: the file cannot be read.
    """
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as fh:
        return fh.read()


def read_utf8(path: str, what: str, *, encoding: str = "utf-8") -> str:
    """A text file that must be UTF-8.

    Args:
        path: the file.
        what: what it is, for the message (``references file``).
        encoding: ``utf-8``, or ``utf-8-sig`` to drop a byte order mark.

    Returns:
        Its text.

    Raises:
        TemplateError: not valid UTF-8.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        raise TemplateError(f"{what} {path} is not valid UTF-8") from None


def load_npy(path: str, what: str) -> np.ndarray:
    """Load a plain .npy array without ever unpickling.

    Args:
        path: the file.
        what: what it holds, for messages (``templates``, ``probe``).

    Returns:
        The array.

    Raises:
        TemplateError: not a .npy array (malformed, truncated, pickled, .npz).
        OSError: the file cannot be read.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError):
        # numpy's messages can run over several lines; ours is one.
        raise TemplateError(f"{what} file {path} is not a valid .npy array") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise TemplateError(f"{what} file {path} is an archive, not a single .npy array")
    return arr


def read_refs(path: str) -> list[str]:
    """One reference per line, UTF-8; a final newline is optional, CRLF is accepted.

    Args:
        path: the references file.

    Returns:
        The references, in file order.

    Raises:
        TemplateError: not UTF-8, empty, or a blank line.
        OSError: the file cannot be read.
    """
    text = read_utf8(path, "references file").removeprefix("\ufeff")
    text = text.removesuffix("\n")
    if not text:
        raise TemplateError(f"references file {path} is empty")
    refs = []
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            raise TemplateError(f"references file {path} line {n} is blank")
        refs.append(line)
    return refs


# -- outputs ------------------------------------------------------------------------------------

def _as_final(exc: OSError, path: str) -> OSError:
    """``exc`` naming ``path`` instead of the temporary file beside it (a name the user never chose)."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), path)


class AtomicOutput:
    """An output file that appears whole or not at all.

    The temporary file is created beside the target when the object is made,
    so an unwritable destination fails before any state changes; it is
    renamed over the target only by :meth:`commit` and removed otherwise.
    Every OSError names the target as given, never the temporary file.

    Args:
        path: the file to write.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        OSError: no temporary file can be created beside it.
    """

    def __init__(self, path: str) -> None:
        self.name = path
        self.path = os.path.abspath(path)
        if os.path.isdir(self.path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".part",
                                            dir=os.path.dirname(self.path))
        except OSError as exc:
            raise _as_final(exc, path) from None
        os.fchmod(fd, 0o644)
        self._fh: IO[bytes] = os.fdopen(fd, "wb")
        self._written = False
        self._committed = False

    def __repr__(self) -> str:
        return f"AtomicOutput({self.path!r})"

    def write(self, data: bytes) -> None:
        """Replace the pending content with ``data`` (flushed to disk).

        Args:
            data: the whole content.

        Raises:
            OSError: the write or the flush fails (disk full, ...), naming the target.
        """
        try:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise _as_final(exc, self.name) from None
        self._written = True

    def commit(self) -> None:
        """Rename the written content into place.

        Raises:
            RuntimeError: nothing was written.
            OSError: the rename fails, naming the target.
        """
        if not self._written:
            raise RuntimeError("nothing was written to the output")
        try:
            self._fh.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise _as_final(exc, self.name) from None
        self._committed = True
        with contextlib.suppress(OSError):
            fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._committed:
            with contextlib.suppress(OSError):
                self._fh.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same inode when both exist, else the same resolved path.

    Args:
        a: a path (``-``, stdin or stdout, is never the same as a file).
        b: another.

    Returns:
        True when writing ``b`` would overwrite ``a``.
    """
    if a == "-" or b == "-":
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they lead
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwriting_inputs(p: argparse.ArgumentParser, outputs: dict[str, str | None],
                              inputs: dict[str, str | list[str] | None]) -> None:
    """A verb's ``check``: refuse, as a usage error, an output file that is one of its inputs.

    Args:
        p: the verb's parser.
        outputs: option (``--out``) -> the file it names, or None when not given.
        inputs: argument (``QUERY_FILE``, ``--keys``) -> the file(s) it names, or None.

    Raises:
        SystemExit: through ``p.error`` (exit 2, nothing read or written).
    """
    for out_name, out in outputs.items():
        if out is None:
            continue
        for in_name, given in inputs.items():
            for path in [given] if isinstance(given, str) else given or []:
                if same_file(path, out):
                    p.error(f"{out_name} {out} is the input {in_name} {path}: write the output to another file")


def stderr_is_tty() -> bool:
    """Whether stderr is a terminal (progress is drawn only there).

    Returns:
        False too for a closed or file-less stderr.
    """
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def emit(args: argparse.Namespace, body: dict[str, Any], text: str, *, fmt: str | None = None, ok: bool = True,
         error: BaseException | tuple[str, str] | None = None) -> None:
    """Print a verb's report: ``text`` for a reader, or with ``--json`` one object of :mod:`pprm.cli.report`.

    Args:
        args: the verb's arguments; ``args.json`` chooses the form, and
            ``args.json_format`` (set by :meth:`Verbs.add`) is the format tag.
        body: the report's fields, printed after ``format``, ``ok`` and ``error``.
        text: the report for a reader; empty prints nothing.
        fmt: a format tag other than the verb's (``pprm.query.batch/1``).
        ok: whether the command exits 0.
        error: why it does not (required exactly when ``ok`` is false); the
            caller prints the ``pprm: error:`` line.
    """
    if getattr(args, "json", False):
        tag = fmt if fmt is not None else args.json_format
        print(json.dumps(report.envelope(tag, body, ok=ok, error=error), indent=1, ensure_ascii=False))
    elif text:
        print(text)
